"""The evaluation suite in the pipeline: oracle-relative metrics, populations, loggers, sweeps (compare: test_compare.py)."""
import json
import math
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY, compose_config
from unlearn.errors import ConfigError
from unlearn.pipeline import Experiment
from unlearn.results import load_rows


def test_oracle_relative_metrics_are_zero_for_the_oracle(run_experiment):
    row = run_experiment("method=retrain")
    oracle = row["reference"]["oracle"]
    assert all(oracle[f"kl_{s}"] == 0.0 == oracle[f"kl_{s}_p95"] for s in ("forget", "retain", "test"))
    assert row["reference"]["original"]["kl_forget"] > 0
    for name in ("mia_entropy", "mia_m_entropy"):
        assert 0.0 <= row["metrics"][name] <= 100.0
    assert 0.0 <= row["metrics"]["mia_loss_auc"] <= 1.0


def test_population_metrics_with_three_oracles(run_experiment):
    row = run_experiment("method=ga", "method.lr=0.05", "method.epochs=5", "method.batch_size=16", "eval.oracles=3")
    metrics = row["metrics"]
    for name in ("klom_forget", "klom_retain", "klom_test", "klom_forget_p95", "lira_auc", "lira_tpr_1pct",
                 "eps_forgetting", "eps_score"):
        assert math.isfinite(metrics[name]), name
    assert metrics["klom_forget"] > 0 and 0 <= metrics["lira_auc"] <= 1 and 0 <= metrics["eps_forgetting"] <= 1


def test_retrain_population_is_indistinguishable_from_the_oracles(run_experiment):
    row = run_experiment("method=retrain", "eval.oracles=3")
    # Unlearned model i *is* oracle i: identical margin samples, so KLoM is exactly 0.
    assert row["metrics"]["klom_forget"] == 0.0 and row["metrics"]["klom_test"] == 0.0


def test_bad_oracle_count_is_refused():
    with pytest.raises(ConfigError, match="eval.oracles must be >= 1"):
        Experiment(compose_config(*TINY, "eval.oracles=0"))


def test_wandb_logger_offline(tmp_path, shared_cache, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    from unlearn.config import build

    cfg = compose_config(*TINY, f"cache_dir={shared_cache}", f"results_dir={tmp_path}", "logger=wandb",
                         "method=ga", "method.epochs=2")
    loggers = [build(node) for node in cfg.logger.values()]
    row = Experiment(cfg).run(run_dir=tmp_path / "run", loggers=loggers)
    for lg in loggers:
        lg.finish()
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")), "no offline W&B run written"
    assert load_rows(tmp_path / "default" / "table.jsonl")[0]["run_id"] == row["run_id"]
    # W&B is an extra sink: the local record is written with it alone, too.
    assert json.loads((tmp_path / "run" / "result.json").read_text())["run_id"] == row["run_id"]


def test_slurm_launcher_config_composes():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher") and cfg.hydra.launcher.gpus_per_node == 1


def test_parallel_workers_lose_no_rows_and_train_once(tmp_path):
    env = {**os.environ, "UNLEARN_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
         "method=ga,rl,ft", "method.epochs=1", *TINY, f"results_dir={tmp_path / 'out'}"],
        capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "default" / "table.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in rows) == ["ft", "ga", "rl"]
    # The workers share one cache: exactly one of them trained the original and the oracle.
    assert sum(not r["timings"]["original_cached"] for r in rows) == 1
    assert sum(not r["timings"]["oracle_cached"] for r in rows) == 1
    assert len(list((tmp_path / "cache").glob("original-*.safetensors"))) == 1

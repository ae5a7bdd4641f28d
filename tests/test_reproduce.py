"""`python -m unlearn reproduce`: rerunning a table's recorded commands and comparing every metric.

The committed table results/reproduce_ci.jsonl (one cheap setting per track: classification, facts LM, diffusion,
text-to-image; 3 seeds each) has its seed-0 rows rerun here: exact on the torch build, thread count and CPU kind
that made it, else within 3 × its seeds' std. So a change that moves published numbers fails here on any machine.
The rest runs over a tiny table this module writes itself with the real `python run.py` (a `-m` sweep over a config
group on tiny digits, and a facts LM run): altered values, rows that no longer compose, devices. Committed tables
are also used where nothing trains: how their sweep commands narrow to one run, and how a .md finds its rows."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TINY
from unlearn import reproduce
from unlearn.errors import BadInputError

TINY_FACTS = ["data=facts", "device=cpu", "threads=1", "data.source.n_authors=4", "data.source.facts_per_author=2",
              "data.source.val_authors=1", "data.source.test_authors=1", "data.source.world_facts=4",
              "forget.ratio=0.25", "data.train.epochs=20", "data.train.lr=3e-3", "data.train.batch_size=8",
              "method=ga", "method.optimizer=adamw", "method.weight_decay=0", "method.batch_size=8", "method.lr=2e-4",
              "method.epochs=1"]


def run_py(*overrides: str) -> None:
    done = subprocess.run([sys.executable, "run.py", *overrides], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory) -> tuple[Path, Path]:
    """(a table of 3 rows written by `python run.py`, the cache that made them): row 0 ga and row 1 rl from one
    `-m` sweep over a config group on tiny digits, row 2 a facts LM run."""
    folder = tmp_path_factory.mktemp("tiny")
    where = [f"results_dir={folder / 'out'}", f"cache_dir={folder / 'cache'}", "experiment=tiny", "save_model=false"]
    run_py("-m", *TINY, "method=ga,rl", "method.epochs=1", "seed=0", *where)
    run_py(*TINY_FACTS, "seed=0", *where)
    table = folder / "tiny.jsonl"
    shutil.copy(folder / "out" / "tiny" / "table.jsonl", table)
    assert [r["method"] for r in rows_of(table)] == ["ga", "rl", "ga"]
    return table, folder / "cache"


def test_the_committed_ci_table_reproduces(shared_cache, capsys):
    """The seed-0 row of each track of results/reproduce_ci.jsonl, rerun (4 runs) in the session's cache: its settings
    are the golden cases' (tests/test_golden.py), so the originals, oracles and judges they train, keyed by their code,
    are trained once for both; the method runs and every metric are recomputed. A fresh cache is the next test's."""
    status = reproduce.main([str(ROOT / "results" / "reproduce_ci.jsonl"), "--seeds", "0", "--cache",
                             str(shared_cache)])
    out = capsys.readouterr().out
    assert status == 0, out[-4000:]
    assert "0 drift, 0 missing" in out and out.count(" s0: ") == 4


def rows_of(table: Path) -> list[dict]:
    return [json.loads(line) for line in table.read_text().splitlines() if line.strip()]


def write_rows(table: Path, rows: list[dict]) -> Path:
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return table


def test_a_tiny_table_reproduces_exactly_from_a_fresh_cache(tiny_table, capsys):
    table, _ = tiny_table
    # rl: the second choice of the recorded `method=ga,rl` sweep; and the LM row.
    assert reproduce.main([str(table), "--rows", "1,2"]) == 0
    out = capsys.readouterr().out
    compared = sum(len(reproduce.compared_metrics(r)) for r in rows_of(table)[1:])
    assert f"{compared} match, 0 drift, 0 missing" in out
    assert out.count("exact (same torch, threads and CPU)") == 2
    assert "RTE_s" in out.splitlines()[-1]  # wall-clock metrics are named as not compared


def test_an_altered_committed_value_is_drift_named_by_its_metric(tiny_table, tmp_path, capsys):
    table, cache = tiny_table
    rows = rows_of(table)
    rows[0]["metrics"]["TA"] += 0.5
    altered = write_rows(tmp_path / "altered.jsonl", rows)
    assert reproduce.main([str(altered), "--rows", "0", "--cache", str(cache)]) == 1
    out = capsys.readouterr().out
    drifted = [line for line in out.splitlines() if "| drift" in line]
    assert len(drifted) == 1 and "| TA " in drifted[0] and "0.5" in drifted[0]
    assert "0 missing" in out


def test_rows_whose_commands_no_longer_compose_are_reported_and_nothing_runs(tiny_table, tmp_path, capsys,
                                                                             monkeypatch):
    rows = rows_of(tiny_table[0])
    rows[0]["command"] = rows[0]["command"].replace("method=ga,rl", "method=gaa,rl")     # a choice since renamed
    rows[1]["command"] = rows[1]["command"] + " method.lrr=0.1"                          # a key since renamed
    rows[2]["command"] = None                                                           # none recorded
    broken = write_rows(tmp_path / "broken.jsonl", rows)
    monkeypatch.setattr(reproduce, "rerun", lambda *a: pytest.fail("a run started"))
    assert reproduce.main([str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4
    assert err[0].startswith("not reproducible: 0 ga s0: method=gaa is not a method config; did you mean ga?")
    assert err[1].startswith("not reproducible: 1 rl s0: method.lrr is not a key of method")
    assert err[2] == "not reproducible: 2 ga s0: the row records no command"
    assert err[3] == "nothing was run: 3 of 3 rows cannot be rerun"


def test_a_row_of_a_device_this_machine_lacks_is_not_reproducible(tiny_table, tmp_path, monkeypatch):
    import torch

    rows = rows_of(tiny_table[0])[:1]
    rows[0]["config"]["device"] = "auto"
    rows[0]["environment"]["device"] = "cuda:0"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runs, problems = reproduce.plan(reproduce.load_table(write_rows(tmp_path / "gpu.jsonl", rows)))
    assert not runs and problems == [f"not reproducible: 0 ga s0: it ran on cuda:0 "
                                     f"({rows[0]['environment']['device_name']}); this machine has no CUDA device"]


@pytest.mark.parametrize("table, index, expected", [
    # method=retrain,ft,ga,rl,salun,l1_sparse seed=0,1,2 with data=digits forget=class threads=1
    ("digits_class.jsonl", 4, ["data=digits", "forget=class", "threads=1", "experiment=digits_class", "method=ft",
                               "seed=1", "device=cpu"]),
    # a config group (attack=quantize) beside a swept key of it (attack.bits=4,8)
    ("robustness_digits.jsonl", 25, ["threads=1", "attack=quantize", "experiment=robust_digits", "method=salun",
                                     "seed=0", "attack.bits=8", "device=cpu"]),
])
def test_a_committed_sweep_row_narrows_to_its_own_run(table, index, expected):
    row = reproduce.load_table(ROOT / "results" / table)[index].row
    overrides, changes = reproduce.Planner().overrides_of(row)
    assert list(overrides) == expected
    assert changes == []  # the config these compose is the one recorded


def test_an_md_table_reads_the_rows_files_it_names(tmp_path, tiny_table):
    mnist = reproduce.load_table(ROOT / "results" / "mnist.md")
    assert sorted({r.source for r in mnist}) == ["digits_class", "digits_l1", "mnist", "mnist_class"]
    assert mnist[0].label == "mnist:0 retrain s0"
    with pytest.raises(BadInputError, match="mnist has rows 0-17"):
        reproduce.select(mnist, "mnist:18")
    with pytest.raises(BadInputError, match="name one, e.g. mnist:3"):
        reproduce.select(mnist, "3")
    with pytest.raises(BadInputError, match=r"llm_scale\.md names no rows file \(\.jsonl\) beside it"):
        reproduce.load_table(ROOT / "results" / "llm_scale.md")
    shutil.copy(tiny_table[0], tmp_path / "tiny.jsonl")
    (tmp_path / "tiny.md").write_text("Rows: `tiny.jsonl`, and `/elsewhere/table.jsonl` (not beside it).\n")
    assert [r.index for r in reproduce.load_table(tmp_path / "tiny.md")] == [0, 1, 2]
    assert [r.index for r in reproduce.select(reproduce.load_table(tmp_path / "tiny.md"), "0-1", methods=["ga"])] == [0]
    with pytest.raises(BadInputError, match=r"no rows match the selection \(seeds in the table: \[0\]"):
        reproduce.select(reproduce.load_table(tmp_path / "tiny.md"), seeds=[5])


def test_tolerance_is_k_seed_stds_above_a_floor():
    assert reproduce.tolerance([1.0, 2.0, 3.0], 2.0) == pytest.approx(3.0)            # 3 × std (ddof 1) = 3 × 1
    assert reproduce.tolerance([1.0, 2.0, 3.0], 2.0, k=2) == pytest.approx(2.0)
    assert reproduce.tolerance([5.0], 5.0) == pytest.approx(5e-6)                     # one seed: the relative floor
    assert reproduce.tolerance([0.0, 0.0], 0.0) == 1e-6                                # no spread: the absolute floor
    assert reproduce.tolerance([1.0, float("nan"), 3.0], 1.0) == pytest.approx(3 * math.sqrt(2))  # NaN left out


def env(torch="2.14.1", threads=1, device="cpu", cpu_kind="AVX2 AuthenticAMD AMD EPYC"):
    return {"torch": torch, "threads": threads, "device": device, "cpu_kind": cpu_kind}


@pytest.mark.parametrize("committed, reproduced, reason", [
    ({"environment": env()}, {"environment": env()}, None),
    # rows before environment.threads: the config's numeric threads stands for it
    ({"environment": env(threads=None), "config": {"threads": 1}}, {"environment": env()}, None),
    ({"environment": env(threads=None), "config": {"threads": "auto"}}, {"environment": env()}, "no thread count"),
    ({"environment": env(threads=2)}, {"environment": env()}, "threads 2 → 1"),
    ({"environment": env(torch="2.3.0")}, {"environment": env()}, "torch 2.3.0 → 2.14.1"),
    ({"environment": env(device="cuda:0")}, {"environment": env(device="cuda:0")}, "only CPU runs"),
    ({"environment": env()}, {"environment": env(cpu_kind="AVX512 GenuineIntel Xeon")}, "CPU AVX2 AuthenticAMD AMD EPYC → AVX512"),
    ({"environment": env(cpu_kind=None)}, {"environment": env()}, None),   # rows from before the CPU kind was recorded
    ({}, {"environment": env()}, "records no environment"),
])
def test_exact_comparison_only_where_determinism_is_promised(committed, reproduced, reason):
    found = reproduce.exact_reason(committed, reproduced)
    assert found is None if reason is None else reason in found


def test_each_metric_is_match_drift_or_missing():
    row = {"task": "classification", "metrics": {"UA": 2.0, "TA": 90.0, "MIA": float("nan"), "kl_forget": 0.1,
                                                 "RTE_s": 3.0},
           "avg_gap": 1.0, "environment": env(torch="2.3.0")}
    again = {"task": "classification", "metrics": {"UA": 2.5, "TA": 95.0, "MIA": float("nan"), "RTE_s": 9.0},
             "avg_gap": 1.0, "environment": env()}
    spread = {"UA": [1.0, 2.0, 3.0], "TA": [90.0, 90.5, 89.5]}
    records = {r["metric"]: r for r in reproduce.compare(reproduce.Committed("t", 0, row, "0"), again, spread)}
    assert list(records) == ["UA", "TA", "MIA", "kl_forget", "avg_gap"]  # RTE_s: wall-clock, not compared
    assert records["UA"]["status"] == "match" and records["UA"]["tolerance"] == pytest.approx(3.0)
    assert records["TA"]["status"] == "drift" and records["TA"]["diff"] == 5.0
    assert records["MIA"]["status"] == "match"  # NaN on both sides
    assert records["kl_forget"]["status"] == "missing"
    same_env = reproduce.compare(reproduce.Committed("t", 0, row | {"environment": env()}, "0"), again, spread)
    assert {r["metric"]: r["status"] for r in same_env}["UA"] == "drift"  # exact: 0.5 off is drift
    assert {r["status"] for r in reproduce.compare(reproduce.Committed("t", 0, row, "0"), None, spread)} == {"missing"}


def test_a_group_choice_is_told_by_its_classes_before_keys_a_newer_harness_added():
    # An old ga row lacks the mask keys today's ga composes with; be differs from it in its class and lr only.
    recorded = {"method": {"_target_": "unlearn.methods.ga.GradientAscent", "lr": 0.01}, "seed": 0}
    ga = {"method": {"_target_": "unlearn.methods.ga.GradientAscent", "lr": 0.01, "mask": "none", "mask_ratio": 0.95,
                     "mask_mu": 1e-6}, "seed": 0}
    be = {"method": {"_target_": "unlearn.methods.be.BoundaryExpanding", "lr": 5e-4}, "seed": 0}
    assert reproduce.distance_of(recorded, ga) == (0, 0, 3)
    assert reproduce.distance_of(recorded, be) == (1, 1, 0)
    assert reproduce.distance_of(recorded, ga) < reproduce.distance_of(recorded, be)
    assert reproduce.config_changes(recorded, be) == [
        "method._target_: unlearn.methods.ga.GradientAscent → unlearn.methods.be.BoundaryExpanding",
        "method.lr: 0.01 → 0.0005"]

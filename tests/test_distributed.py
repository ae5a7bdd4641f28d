"""Data-parallel unlearning under `accelerate launch`: per-process shards and retain draws, and one recorded row."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearn.data.tensordata import TensorData
from unlearn.runtime import Runtime
from unlearn.training import Streams, rank_streams

ROOT = Path(__file__).resolve().parents[1]


def test_each_process_takes_its_shard_and_draws_its_own_retain_batches():
    forget = TensorData(i=torch.arange(5))
    retain = TensorData(i=torch.arange(100, 140))
    streams = Streams(forget=forget, retain=retain, mode="forget")
    drawn = {}
    for rank in (0, 1):
        runtime = Runtime(device=torch.device("cpu"), rank=rank, world_size=2)
        mine, gen = rank_streams(streams, torch.Generator().manual_seed(7), runtime)
        steps = list(mine.epoch(2, gen, {}))
        drawn[rank] = ([b["i"].tolist() for b, _ in steps], [r["i"].tolist() for _, r in steps])
    (f0, r0), (f1, r1) = drawn[0], drawn[1]
    assert len(f0) == len(f1)  # the same number of steps on every process (5 forget rows padded to 6)
    assert sorted(sum(f0, []) + sum(f1, [])) == [0, 0, 1, 2, 3, 4]  # shards cover forget, wrapping once
    assert r0 != r1  # retain batches are drawn independently per process
    single, gen = rank_streams(streams, torch.Generator().manual_seed(7), Runtime(device=torch.device("cpu")))
    assert single is streams  # one process: nothing changes


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate's launcher is not installed")
def test_accelerate_launch_unlearns_data_parallel_and_records_one_row(tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 run.py ... device=cpu` on tiny facts (~30 s on 2 cores): two
    processes over torch.distributed (gloo). `--cpu --num_processes 2` starts only one process unless accelerate is
    given an MPI hostfile (its CPU launcher is mpirun), so the torch.distributed launcher is used here."""
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    overrides = ["data=facts", "device=cpu", "threads=1", "data.source.n_authors=6", "data.source.facts_per_author=2",
                 "data.source.val_authors=1", "data.source.test_authors=2", "data.source.world_facts=2",
                 "forget.ratio=0.34", "data.train.epochs=30", "data.train.lr=3e-3", "data.train.batch_size=8",
                 "method=ga", "method.lr=2e-4", "method.epochs=3", "method.optimizer=adamw", "method.weight_decay=0",
                 "method.batch_size=2", f"results_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'cache'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                           "--mixed_precision", "no", "--dynamo_backend", "no", "run.py", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "default" / "table.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # written once, by rank 0
    row = rows[0]
    assert row["status"] == "ok" and row["environment"]["processes"] == 2
    assert row["metrics"]["forget_prob"] < row["reference"]["original"]["forget_prob"] - 0.02  # unlearned
    assert len(list((tmp_path / "out" / "default" / "runs").iterdir())) == 1  # one run dir
    assert done.stdout.count("llm | data=facts") == 1  # one summary, printed by rank 0

"""The cache's entry format cannot run code: tensors in safetensors, the rest in JSON with a typed encoding. A crafted
entry (a pickle that would run code, a JSON naming a type outside the allowlist) is refused and recomputed, never
executed; every kind of value the pipeline caches comes back with its types, dtypes and values."""
from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from unlearn.cache import FORMAT_VERSION, Cache, NotCached, UnstorableValue, content_key
from unlearn.data.forget import ForgetSet
from unlearn.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


class WritesMarker:
    """Unpickling this object creates `path` (what a crafted entry in a shared cache would do, with worse code)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def test_a_pickle_that_would_run_code_is_never_executed_in_either_format_name(tiny_cache, tmp_path, caplog):
    marker = tmp_path / "marker"
    crafted = pickle.dumps({"state_dict": WritesMarker(marker)})
    pickle.loads(crafted)["state_dict"].close()  # the payload really runs code when unpickled ...
    assert marker.exists()
    marker.unlink()
    key = content_key("original", code="c", seed=0)
    tiny_cache.root.mkdir(parents=True)
    (tiny_cache.root / f"{key}.pt").write_bytes(crafted)  # the old format's name: never read
    torch.save({"state_dict": WritesMarker(marker)}, tiny_cache.path(key))  # the new format's name
    value, cached = tiny_cache.get_or_compute(key, lambda: {"v": 1}, "original")
    assert (value, cached) == ({"v": 1}, False)
    assert not marker.exists()  # ... but loading the cache never unpickles
    assert "cannot be loaded" in caplog.text
    assert tiny_cache.load(key) == {"v": 1}  # the crafted file was replaced by the recomputed entry


def crafted_entry(cache: Cache, key: str, tree, tensors=None) -> None:
    cache.root.mkdir(parents=True, exist_ok=True)
    save_file(tensors or {}, str(cache.path(key)),
              metadata={"unlearn.format": str(FORMAT_VERSION), "unlearn.value": json.dumps(tree)})


@pytest.mark.parametrize("tree", [
    {"__dataclass__": ["subprocess.Popen", {"args": ["touch", "x"]}]},        # a type outside the allowlist
    {"__dataclass__": ["ForgetSet", {"indices": [1], "extra": 1}]},            # an allowlisted type, wrong fields
    {"__tensor__": "7"},                                                       # a tensor the file does not hold
    {"__pickle__": "gASV"},                                                    # an unknown tag
    {"__float__": "__import__('os')"},                                         # floats are nan/inf only
    {"__npscalar__": ["|O", 1]},                                               # object dtype
])
def test_a_crafted_json_entry_is_refused_and_recomputed(tiny_cache, tree, caplog):
    crafted_entry(tiny_cache, "k", {"x": tree})
    assert tiny_cache.load("k") is None and "cannot be loaded" in caplog.text
    assert tiny_cache.get_or_compute("k", lambda: 3, "thing") == (3, False)


def test_an_entry_of_another_format_version_is_refused(tiny_cache):
    tiny_cache.root.mkdir(parents=True)
    save_file({}, str(tiny_cache.path("k")), metadata={"unlearn.format": "1", "unlearn.value": "3"})
    assert tiny_cache.load("k") is None


def model_payload() -> dict:
    torch.manual_seed(0)
    return {"state_dict": {"conv.weight": torch.randn(4, 1, 3, 3), "bn.num_batches_tracked": torch.tensor(7),
                           "emb": torch.randn(5, 3).to(torch.bfloat16), "empty": torch.zeros(0, 3)},
            "masks": {"conv.weight": torch.rand(4, 1, 3, 3) > 0.5}, "checkpoint": None,
            "model_config": {"_target_": "unlearn.models.cnn.SmallCNN", "width": 16, "dropout": 0.0, "lora": None,
                             "layers": [1, 2]},
            "train_seconds": 1.25, "train_cpu_seconds": 2.5, "stacked": 3}


# One value of each kind the pipeline caches (every get_or_compute / cache.save call site, by what it stores).
VALUES = {
    "original or oracle (store.py, populations.Stack)": model_payload(),
    "forget set (request.py)": ForgetSet(indices=np.array([3, 9, 12]), test_indices=np.arange(4, dtype=np.int64),
                                         description={"builder": "class", "classes": [1], "size": 3, "ratio": None}),
    "reference metrics (evaluation.py)": {"UA": 12.5, "MIA": np.float64(0.25), "kl": np.float32(0.5),
                                          "fluency": float("nan"), "ppl": float("inf"), "lira_auc": -float("inf")},
    "weight mask (methods/base.py)": {"mask": {"fc.weight": torch.ones(3, 2)}, "seconds": 0.1},
    "attribution (method_stage.py)": {"psi": [torch.randn(6, 4), torch.randn(6, 4)], "seconds": 0.3},
    "judge (diffusion.py, t2i.py)": {"state_dict": {"w": torch.ones(2)}, "test_acc": {"shape": 91.0, "colour": 99.5}},
    "sisa stage (methods/sisa.py)": {"state_dict": {"w": torch.ones(2)}, "passes": 0, "seconds": 0.0},
    "population member (populations.Members)": {
        "diverged": False,
        "stats": {role: {"forget": np.linspace(-1, 1, 5, dtype=np.float32), "val": np.zeros(0, dtype=np.float32)}
                  for role in ("original", "oracle", "unlearned")},
        "utility": {"unlearned": {"RA": 90.0, "TA": np.float64(80.0)}, "oracle": {"RA": 91.0, "TA": 81.0}}},
    "a diverged population member": {"diverged": True},
    "odd containers": {"tuple": (1, (2.5, "x")), "int keys": {0: "a", 1: [None, True]}, "__dunder": 1,
                       "bytes order": np.arange(3, dtype=">f8"), "bool array": np.array([True, False]),
                       "np ints": [np.int64(3), np.bool_(True), np.uint8(200)]},
}


def same(a, b, where="value") -> None:
    """Equal values of the same types (dtype, shape and device for tensors and arrays; NaN equals NaN)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} came back as {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, b.device.type) == (b.dtype, b.shape, "cpu") and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert (a.dtype, a.shape) == (b.dtype, b.shape) and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    elif isinstance(a, ForgetSet):
        for field in ("indices", "test_indices", "description"):
            same(getattr(a, field), getattr(b, field), f"{where}.{field}")
    elif isinstance(a, (float, np.floating)) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


@pytest.mark.parametrize("what", list(VALUES))
def test_every_cached_value_type_round_trips(tiny_cache, what):
    tiny_cache.save("k", VALUES[what])
    same(VALUES[what], tiny_cache.load("k"))


def test_tied_weights_are_stored(tiny_cache):
    weight = torch.randn(5, 3)
    tiny_cache.save("k", {"embed.weight": weight, "lm_head.weight": weight, "row": weight[1]})
    loaded = tiny_cache.load("k")
    assert torch.equal(loaded["lm_head.weight"], weight) and torch.equal(loaded["row"], weight[1])


def test_a_value_the_format_cannot_store_is_named_and_not_written(tiny_cache, caplog):
    with pytest.raises(UnstorableValue, match=r"value\.model: a torch\.nn\.modules\.linear\.Linear"):
        tiny_cache.save("k", {"model": torch.nn.Linear(2, 2)})
    assert not tiny_cache.path("k").exists() and list(tiny_cache.root.glob("*.tmp")) == []
    # get_or_compute keeps a finished computation: returned, uncached, with a warning
    value, cached = tiny_cache.get_or_compute("k", lambda: {"s": {1, 2}}, "thing")
    assert value == {"s": {1, 2}} and not cached and "not cached" in caplog.text


def test_entries_are_readable_by_others_as_the_umask_allows(tiny_cache):
    tiny_cache.save("k", 1)
    umask = os.umask(0)
    os.umask(umask)
    assert tiny_cache.path("k").stat().st_mode & 0o777 == 0o666 & ~umask


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    import unlearn.cache as cache

    def half_then_hang(tensors, filename, metadata=None):  # killed in the middle of writing the entry
        Path(filename).write_bytes(b"partial entry")
        Path(sys.argv[2]).touch()
        time.sleep(60)

    cache.save_file = half_then_hang
    cache.Cache(sys.argv[1]).save("k", {"w": torch.ones(1000)})
""")


def test_a_job_killed_mid_write_leaves_no_entry(tmp_path):
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path / "cache"), str(ready)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, "the writer did not start"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    cache = Cache(tmp_path / "cache")
    assert not cache.path("k").exists() and cache.load("k") is None
    assert len(list(cache.root.glob(".k.*.tmp"))) == 1  # the partial file is a temp file, never read as an entry
    assert cache.get_or_compute("k", lambda: 5, "thing") == (5, False)


def test_a_cache_folder_that_cannot_be_written_is_one_config_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"cache folder .*file/cache is not writable.*use_cache=false"):
        Cache(tmp_path / "file" / "cache").check_writable()
    Cache(tmp_path / "file" / "cache", enabled=False).check_writable()  # no cache, nothing to write
    Cache(tmp_path / "fresh" / "cache").check_writable()  # its parent can be written: fine, and nothing created yet
    assert not (tmp_path / "fresh").exists()


def test_only_cached_refuses_to_compute(tiny_cache):
    tiny_cache.save("here", 1)
    with tiny_cache.only_cached():
        assert tiny_cache.get_or_compute("here", lambda: 2, "thing") == (1, True)
        with pytest.raises(NotCached, match="thing"):
            tiny_cache.get_or_compute("missing", lambda: 2, "thing")
    assert tiny_cache.get_or_compute("missing", lambda: 2, "thing") == (2, False)


def test_a_key_held_by_this_process_is_reentered_not_waited_on(tiny_cache):
    """A stage holds a key (stacked training, the original beside the oracle) while a nested get_or_compute of the
    same key saves it; a second Cache on the same folder shares the lock."""
    with tiny_cache.locked(["b", "a"]), tiny_cache.lock("a"):
        assert Cache(tiny_cache.root).get_or_compute("a", lambda: 1, "thing") == (1, False)

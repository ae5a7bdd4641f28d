"""Release bundles (`python -m unlearn export` / `verify`) on the real pipeline at tiny size.

One module-scoped table of two tiny digits runs (one saved its model, one did not: export re-creates it by rerunning
its command) is exported once; the tests verify that bundle, copies of it with a file altered, removed, added or
replaced by a crafted pickle (never unpickled: the marker file it would create never appears), and exports refused
for bad input, each leaving nothing behind."""
from __future__ import annotations

import importlib.metadata as md
import json
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from conftest import TINY
from unlearn.bundle import Bundle, main_export, main_verify
from unlearn.bundle.files import MANIFEST, file_records
from unlearn.config import compose_config
from unlearn.pipeline import Experiment


def run(folder: Path, name: str, *overrides: str, save_model: bool, cache: Path | None = None) -> dict:
    """A recorded tiny run (its run dir `folder/name`), as `python run.py <overrides>` would record it."""
    given = [*TINY, *overrides, f"results_dir={folder / 'out'}", f"cache_dir={cache or folder / 'cache'}",
             f"save_model={str(save_model).lower()}"]
    return Experiment(compose_config(*given)).run(run_dir=folder / name, command="python run.py " + shlex.join(given))


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """{table: two rows (0: ga, model saved; 1: rl, no model saved), run: row 0's run dir, bundle: the table's}."""
    folder = tmp_path_factory.mktemp("bundle")
    run(folder, "ga", "method=ga", "method.epochs=1", "method.lr=0.05", save_model=True)
    run(folder, "rl", "method=rl", "method.epochs=1", save_model=False)
    table = folder / "table.jsonl"
    shutil.copy(folder / "out" / "default" / "table.jsonl", table)
    assert main_export([str(table), str(folder / "bundle")]) == 0
    return {"table": table, "run": folder / "ga", "bundle": folder / "bundle", "folder": folder}


def rows_of(table: Path) -> list[dict]:
    return [json.loads(line) for line in table.read_text().splitlines() if line.strip()]


def copy_of(bundle: Path, where: Path) -> Path:
    return Path(shutil.copytree(bundle, where / "copy"))


def relist(bundle: Path) -> None:
    """Rewrite the manifest's file list to match the folder: what a crafted bundle's author would do."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"] = file_records(bundle)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


def test_export_then_verify_matches_every_reevaluated_metric(made, capsys, monkeypatch):
    bundle = made["bundle"]
    assert rows_of(bundle / "rows.jsonl") == rows_of(made["table"])  # same machine: the recorded rows, as they are
    names = {p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file()}
    assert {p.rsplit(".", 1)[-1] for p in names} == {"json", "jsonl", "safetensors"}
    assert len([n for n in names if n.startswith("models/")]) == 2  # one original and one oracle for both runs
    infos = [json.loads((bundle / f"runs/{n}/run.json").read_text()) for n in (0, 1)]
    assert [i["unlearned"]["origin"] for i in infos] == ["saved by the run", "re-created by rerunning its command"]
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert set(manifest["files"]) == names - {MANIFEST} and manifest["environment"]["torch"] == md.version("torch")
    capsys.readouterr()

    def refuse(*args, **kwargs):
        raise AssertionError("verify unpickled something")

    # Nothing is unpickled on the way: every loader of pickles fails the test if called.
    for target, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, name, refuse)
    assert main_verify([str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "manifest ok" in out and ", 0 drift" in out and out.count("exact (same torch, threads and device)") == 2
    assert "| drift" not in out and "| 1 rl s0 | unlearned | avg_gap" in out


def test_a_bundle_scores_your_model_against_its_forget_set_and_oracle(made):
    bundle = Bundle(made["bundle"])
    opened = bundle.open_run(1)
    row = rows_of(made["table"])[1]
    assert len(opened.splits.forget) == row["forget"]["size"]
    # "Your" model: the original unchanged scores as the row's original did; its gaps are to the bundled oracle.
    scored = bundle.score(opened.models["original"], opened=opened)
    assert {m: scored["metrics"][m] for m in row["reference"]["original"] if m in scored["metrics"]} == \
        {m: v for m, v in row["reference"]["original"].items() if m in scored["metrics"]}
    assert scored["gap"]["UA"] == abs(row["reference"]["original"]["UA"] - row["reference"]["oracle"]["UA"])


@pytest.mark.parametrize("change, says", [
    (lambda b: (b / "runs/0/unlearned.safetensors").write_bytes(
        (b / "runs/0/unlearned.safetensors").read_bytes()[:-4] + b"\0\0\0\1"), "runs/0/unlearned.safetensors: altered"),
    (lambda b: (b / "rows.jsonl").write_text((b / "rows.jsonl").read_text().replace('"UA": ', '"UA": 1', 1)),
     "rows.jsonl: altered"),
    (lambda b: (b / "runs/1/forget_indices.json").unlink(),
     "runs/1/forget_indices.json: listed in the manifest but missing"),
    (lambda b: (b / "runs/1/notes.json").write_text("{}"), "runs/1/notes.json: a file the manifest does not list"),
    (lambda b: (b / MANIFEST).unlink(), "holds no manifest.json"),
])
def test_a_missing_altered_or_added_file_is_one_line(made, tmp_path, capsys, change, says):
    bundle = copy_of(made["bundle"], tmp_path)
    change(bundle)
    assert main_verify([str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


class RunsCode:
    """Unpickling this creates `marker` (pickle calls open(marker, "w")): what a crafted checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def craft_pickle(bundle: Path, marker: Path) -> None:
    (bundle / "runs/0/unlearned.safetensors").write_bytes(pickle.dumps(RunsCode(marker)))


def craft_torch_save(bundle: Path, marker: Path) -> None:
    name = next(p for p in (bundle / "models").iterdir() if p.name.startswith("original-"))
    torch.save({"state_dict": RunsCode(marker)}, name)


def craft_pt_file(bundle: Path, marker: Path) -> None:
    (bundle / "runs/0/model.pt").write_bytes(pickle.dumps(RunsCode(marker)))


def craft_config(bundle: Path, marker: Path) -> None:
    config = json.loads((bundle / "runs/0/config.json").read_text())
    config["data"]["task"] = {"_target_": "builtins.open", "file": str(marker), "mode": "w"}
    (bundle / "runs/0/config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("craft, says", [
    (craft_pickle, "runs/0/unlearned.safetensors is not a safetensors file"),
    (craft_torch_save, "is not a safetensors file"),
    (craft_pt_file, "runs/0/model.pt: a bundle holds only"),
    (craft_config, "data.task._target_='builtins.open' is not a target of this harness"),
])
def test_a_bundle_crafted_to_run_code_is_refused_unread(made, tmp_path, capsys, craft, says):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(RunsCode(tmp_path / "proof")))  # the payload does run code when unpickled...
    assert (tmp_path / "proof").exists()
    bundle = copy_of(made["bundle"], tmp_path)
    craft(bundle, marker)
    relist(bundle)  # ... and its manifest is consistent, as a crafted bundle's would be
    assert main_verify([str(bundle)]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1
    assert not marker.exists()


def leftovers(out: Path) -> list[Path]:
    return [out, *out.parent.glob(f".{out.name}.*")]


def test_bad_export_input_is_one_line_each_and_writes_nothing(made, tmp_path, capsys):
    rows = rows_of(made["table"])
    out = tmp_path / "b"
    no_commands = tmp_path / "no_commands.jsonl"
    no_commands.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "command"}) + "\n" for r in rows))
    diverged = tmp_path / "diverged.jsonl"
    diverged.write_text(json.dumps(rows[0] | {"status": "diverged"}) + "\n")
    cases = [
        (no_commands, ["cannot bundle 0 ga s0: the row records no command",
                       "cannot bundle 1 rl s0: the row records no command", "nothing written: 2 of 2 rows"]),
        (diverged, ["status is 'diverged': there is no unlearned model", "nothing written: 1 of 1 rows"]),
        (tmp_path / "nowhere.jsonl", ["no such run dir or table"]),
        (tmp_path, ["is neither a run dir (it holds no result.json) nor a table"]),
    ]
    for source, says in cases:
        assert main_export([str(source), str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == len(says) and all(s in line for s, line in zip(says, err)), err
        assert not any(p.exists() for p in leftovers(out))
    assert main_export([str(made["table"]), str(made["bundle"])]) == 2
    assert "already exists" in capsys.readouterr().err


def test_weights_that_do_not_give_their_row_are_refused_and_nothing_is_left(made, tmp_path, capsys):
    rows = rows_of(made["table"])
    rows[1]["metrics"]["TA"] += 0.5  # row 1 is re-created after row 0 is written: the half-written bundle goes
    table = tmp_path / "altered.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "b"
    assert main_export([str(table), str(out), "--cache", str(made["folder"] / "cache")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: 1 rl s0: its re-created weights do not give the recorded metrics (unlearned TA")
    assert not any(p.exists() for p in leftovers(out))


def test_a_run_from_a_published_original_bundles_only_what_the_method_changed(made, tmp_path, capsys):
    bundle = Bundle(made["bundle"])
    original = bundle.open_run(0).models["original"]
    published = tmp_path / "original.pt"
    torch.save(original.state_dict(), published)  # the benchmark's published target (a state-dict file)
    run(tmp_path, "ga", "method=ga", "method.epochs=1", "method.lr=0.05", f"original.path={published}",
        save_model=True, cache=made["folder"] / "cache")
    out = tmp_path / "b"
    assert main_export([str(tmp_path / "ga"), str(out)]) == 0
    info = json.loads((out / "runs/0/run.json").read_text())
    assert info["unlearned"]["diff_against"] == "original" and info["original"]["published"]["path"] == str(published)
    assert [p.name.split("-")[0] for p in (out / "models").iterdir()] == ["oracle"]
    capsys.readouterr()
    assert main_verify([str(out)]) == 0
    assert ", 0 drift" in capsys.readouterr().out
    published.write_bytes(published.read_bytes() + b"\0")  # not the published model the bundle was made from
    assert main_verify([str(out)]) == 2
    assert "the published original at" in capsys.readouterr().err


def test_the_bundled_original_and_oracle_load_as_published_checkpoints(made, tmp_path):
    """The command-line route of docs/bundles.md: the bundle's safetensors files as `original.path`/`oracle.path`
    (read with safetensors, never unpickled) with its forget indices give the bundled row's reference figures."""
    bundle = made["bundle"]
    info = json.loads((bundle / "runs/0/run.json").read_text())
    row = rows_of(made["table"])[0]
    models = {role: bundle / info[role]["file"] for role in ("original", "oracle")}
    fresh = run(tmp_path, "again", "method=ga", "method.epochs=1", "method.lr=0.05", "forget=from_file",
                f"forget.path={bundle / 'runs/0/forget_indices.json'}", f"original.path={models['original']}",
                f"oracle.path={models['oracle']}", save_model=False, cache=tmp_path / "cache")
    for role in ("original", "oracle"):
        mine, bundled = fresh["reference"][role], row["reference"][role]
        assert {m: mine[m] for m in ("UA", "RA", "TA")} == {m: bundled[m] for m in ("UA", "RA", "TA")}

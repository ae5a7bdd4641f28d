"""The bundle on disk: its layout, its manifest, and reading it without running anything it holds.

A bundle comes from someone else, so nothing in it is trusted until checked, and nothing is ever executed:
- the manifest names every file with its SHA-256 and size; a file missing, altered, unlisted, linked (symlink)
  or of a kind a bundle never holds (anything but .json, .jsonl and .safetensors) is refused with one line;
- JSON is read with `json`; tensors with `safetensors` (a header and raw bytes: no pickle, no torch.load);
- a config may only name `_target_`s that the harness's own config groups (conf/**/*.yaml) name, and no
  interpolation (`${...}`), so building its task, data and model imports and calls only the harness's registry.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from unlearn.errors import BadInputError

FORMAT = "unlearn-bundle"
VERSION = 1
MANIFEST = "manifest.json"
ROWS = "rows.jsonl"
ENVIRONMENT = "environment.json"
#: The only kinds of file a bundle holds: nothing else is read, so nothing else may be there.
SUFFIXES = (".json", ".jsonl", ".safetensors")
_PATH = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_BLOCK = 1 << 20


class BadBundle(BadInputError):
    """A bundle that is not one this harness wrote, or was changed since (one line naming the file)."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def file_records(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "size" (bytes)}} of every file under `root` but the manifest, sorted."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name != MANIFEST:
            out[name] = {"sha256": sha256_of(path), "size": path.stat().st_size}
    return out


def write_json(path: Path, value: Any) -> None:
    """JSON as the harness writes rows (NaN stays NaN: rows carry NaN metrics)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, default=str) + "\n")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, default=str) + "\n" for row in rows))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A plain safetensors file named by state-dict keys (what `safetensors.torch.load_file` and HF read), tensors
    sharing memory (tied weights) stored as copies, since safetensors refuses shared storage."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    plain = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():
            tensor = tensor.clone()
        seen.add(tensor.untyped_storage().data_ptr())
        plain[name] = tensor
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(plain, str(path), metadata=metadata)


# ---- reading ------------------------------------------------------------------------------------------------
def check_manifest(root: Path) -> dict[str, Any]:
    """The manifest of the bundle at `root`, after checking that the folder holds exactly the files it lists, each
    with its hash and size. BadBundle (one line naming the first file at fault) otherwise."""
    if not root.is_dir():
        raise BadBundle(f"{root}: no such bundle (a folder written by `python -m unlearn export`)")
    present = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        for entry in [*dirs, *files]:
            path = Path(folder) / entry
            if path.is_symlink():  # before anything is read: a link could lead out of the bundle
                raise BadBundle(f"{path.relative_to(root).as_posix()} is a symbolic link; a bundle holds files only")
        present += [(Path(folder) / f).relative_to(root).as_posix() for f in files]
    if MANIFEST not in present:
        raise BadBundle(f"{root} holds no {MANIFEST}: not a bundle (or its manifest was removed)")
    manifest = read_json(root, MANIFEST)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadBundle(f"{root / MANIFEST} is not an unlearn bundle manifest (format {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise BadBundle(f"{root / MANIFEST}: bundle version {manifest.get('version')!r}; this harness reads "
                        f"version {VERSION}")
    listed = manifest.get("files")
    if not isinstance(listed, dict) or not all(isinstance(v, dict) for v in listed.values()):
        raise BadBundle(f"{root / MANIFEST} lists no files")
    for name in listed:
        safe_name(name)
    for name in sorted(present):
        if name != MANIFEST and name not in listed:
            raise BadBundle(f"{name}: a file the manifest does not list (added after export?)")
    for name, record in listed.items():
        path = root / name
        if not path.is_file():
            raise BadBundle(f"{name}: listed in the manifest but missing from the bundle")
        if path.stat().st_size != record.get("size") or sha256_of(path) != record.get("sha256"):
            raise BadBundle(f"{name}: altered since export (its size or SHA-256 differs from the manifest's)")
    return manifest


def safe_name(name: Any) -> str:
    """A manifest path: relative, plain characters, no `..`, a suffix a bundle may hold. BadBundle otherwise."""
    if not isinstance(name, str) or not _PATH.fullmatch(name) or ".." in name.split("/"):
        raise BadBundle(f"the manifest names {name!r}, which is not a plain relative path inside the bundle")
    if not name.endswith(SUFFIXES):
        raise BadBundle(f"{name}: a bundle holds only {', '.join(SUFFIXES)} files (nothing that could run when read)")
    return name


def read_json(root: Path, name: str) -> Any:
    try:
        return json.loads((root / name).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadBundle(f"{name} is not readable JSON ({type(exc).__name__}: {exc})") from None


def read_jsonl(root: Path, name: str) -> list[Any]:
    try:
        return [json.loads(line) for line in (root / name).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadBundle(f"{name} is not readable JSON Lines ({type(exc).__name__}: {exc})") from None


def read_tensors(root: Path, name: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file of the bundle, on the CPU. Only `safetensors` parses it: a file of another
    format (a pickle renamed, say) is refused, never unpickled."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not name.endswith(".safetensors"):
        raise BadBundle(f"{name}: weights are read from .safetensors files only")
    try:
        return load_file(str(root / name), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadBundle(f"{name} is not a safetensors file ({first}); it is refused unread") from None


# ---- configs -------------------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def registry_targets() -> frozenset[str]:
    """Every `_target_` the harness's config groups name: the only callables a bundled config may select."""
    import yaml

    from unlearn.config import CONF_DIR

    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str):
                found.add(target)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for file in Path(CONF_DIR).rglob("*.yaml"):
        try:
            walk(yaml.safe_load(file.read_text()))
        except yaml.YAMLError:  # not a config of ours to count (a malformed yaml fails where it is used)
            continue
    return frozenset(found)


def check_config(config: Any, where: str) -> dict[str, Any]:
    """`config` if it is a plain resolved config whose `_target_`s are all the harness's own (`registry_targets`)
    and that holds no interpolation; BadBundle naming the first offending key otherwise."""
    if not isinstance(config, dict):
        raise BadBundle(f"{where} is not a config (a JSON object)")
    allowed = registry_targets()

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                here = f"{path}.{key}" if path else str(key)
                if not isinstance(key, str) or "${" in key:
                    raise BadBundle(f"{where}: key {here!r} is not a plain name")
                if key == "_target_" and value not in allowed:
                    raise BadBundle(f"{where}: {here}={value!r} is not a target of this harness's config groups "
                                    f"(conf/); a bundle may only select the harness's own code")
                walk(value, here)
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}[{i}]")
        elif isinstance(node, str) and "${" in node:
            raise BadBundle(f"{where}: {path} holds an interpolation ({node[:40]!r}); a bundled config is resolved")

    walk(config, "")
    return config

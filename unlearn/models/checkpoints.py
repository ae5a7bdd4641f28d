"""Published originals and oracles (`original.path`, `oracle.path`): loaded instead of trained, keyed by identity.

A benchmark publishes its fine-tuned target and its retain model (TOFU, MUSE) or a trained classifier. The
model config's factory says how to load one: a factory with a `from_checkpoint(folder, model_config)` attribute (the
causal LMs: `from_pretrained`, a local folder or a hub id) uses it; any other model is built from its config and
given the state dict in the file (a plain state dict, a run's `model.pt`, or a safetensors file such as a release
bundle's `models/<identity>.safetensors`). The cache keys a loaded model by
what it is, not where it lies: the hub id and resolved revision, or the path, plus the hash of every file.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from unlearn.hub import why_unreachable
from unlearn.errors import ConfigError

ROLES = ("original", "oracle")


@dataclass
class Checkpoint:
    """One published model: where it is (`path`: a local file or folder, or a hub id), and its identity."""

    role: str
    path: str
    revision: str | None
    local: Path          # the file or folder on disk (a hub id's downloaded snapshot)
    identity: dict[str, Any]


def _file_hashes(root: Path) -> dict[str, str]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and ".cache" not in p.parts)
    out = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
        out[str(f.relative_to(root)) if root.is_dir() else f.name] = h.hexdigest()
    return out


def resolve(role: str, path: str, revision: str | None = None) -> Checkpoint:
    """The checkpoint at `path` (a local file or folder, else a hub id downloaded or found in the hub cache), or
    one ConfigError saying it is neither."""
    local = Path(path).expanduser()
    if local.exists():
        return Checkpoint(role, path, revision, local.resolve(), {"path": str(local.resolve()), "files": _file_hashes(local)})
    if path.startswith(("/", ".", "~")) or os.sep in path.strip("/").replace("/", "", 1):
        raise ConfigError(f"{role}.path={path!r}: no such file or folder (neither a file or folder on this machine "
                          f"nor a hub id such as owner/name)")
    from huggingface_hub import snapshot_download

    unreachable = why_unreachable()  # then only the hub's local cache can serve it, without a minute of retries
    try:
        folder = Path(snapshot_download(path, revision=revision, local_files_only=unreachable is not None))
    except Exception as exc:  # not a repo id, no network, gated, unknown revision: all the same to the user
        why = f"the hub cannot be used from here: {unreachable}" if unreachable else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"{role}.path={path!r} is neither a file or folder on this machine nor a hub model that can "
                          f"be fetched from here ({why}); give a folder saved with save_pretrained, a state-dict "
                          f"file, or a hub id on a machine with network") from None
    return Checkpoint(role, path, revision, folder,
                      {"hub": path, "revision": folder.name, "files": _file_hashes(folder)})


def load(checkpoint: Checkpoint, factory: Callable[..., Any], build_model: Callable[[], nn.Module],
         model_config: dict | None = None) -> nn.Module:
    """The published model: `factory.from_checkpoint(folder, model_config)` where the model config's factory has
    one, else the model its config builds, given the file's state dict (ConfigError if the weights do not fit)."""
    loader = getattr(factory, "from_checkpoint", None)
    if loader is not None:
        return loader(str(checkpoint.local), model_config)
    if checkpoint.local.is_dir():
        raise ConfigError(f"{checkpoint.role}.path={checkpoint.path!r} is a folder, but this model loads a state-dict "
                          f"file (torch.save of its state_dict, or a run's model.pt)")
    if checkpoint.local.suffix == ".safetensors":  # e.g. a bundle's weights (python -m unlearn export): never unpickled
        from safetensors.torch import load_file

        payload = load_file(str(checkpoint.local))
    else:
        payload = torch.load(checkpoint.local, map_location="cpu", weights_only=True)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"{checkpoint.role}.path={checkpoint.path!r} holds no state dict")
    model = build_model()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"{checkpoint.role}.path={checkpoint.path!r} does not fit the configured model: "
                          f"{str(exc).splitlines()[0]}") from None
    return model


def architecture(model: nn.Module) -> dict[str, Any]:
    """What two models must share to be an original and its oracle: the HF model type, and every weight's name
    and shape."""
    config = getattr(model, "config", None)
    return {"model_type": getattr(config, "model_type", type(model).__name__),
            "weights": {name: tuple(t.shape) for name, t in model.state_dict().items()}}


def tokenizer_identity(folder: Path | str) -> dict[str, Any] | None:
    """The vocabulary, special tokens and chat template of the tokenizer saved in `folder` (None if it holds none)."""
    folder = Path(folder)
    if not folder.is_dir() or not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json",
                                                                       "vocab.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    return {"vocab": hashlib.sha256(repr(sorted(tok.get_vocab().items())).encode()).hexdigest(),
            "special": {k: str(v) for k, v in sorted(tok.special_tokens_map.items())},
            "chat_template": tok.chat_template}


def check_pair(original: nn.Module, oracle: nn.Module, original_tokenizer: Path | str | None,
               oracle_tokenizer: Path | str | None) -> None:
    """ConfigError unless the oracle has the original's architecture and (when both come with one) tokenizer."""
    a, b = architecture(original), architecture(oracle)
    if a["model_type"] != b["model_type"]:
        raise ConfigError(f"the oracle is a {b['model_type']} model and the original a {a['model_type']} model; "
                          f"an oracle must be the original's architecture retrained without the forget set")
    if a["weights"] != b["weights"]:
        differ = sorted(set(a["weights"].items()) ^ set(b["weights"].items()))[:3]
        raise ConfigError(f"the oracle's weights do not match the original's architecture (e.g. {differ}); an oracle "
                          f"must be the original's architecture retrained without the forget set")
    if original_tokenizer is None or oracle_tokenizer is None:
        return
    mine, theirs = tokenizer_identity(original_tokenizer), tokenizer_identity(oracle_tokenizer)
    if mine is not None and theirs is not None and mine != theirs:
        what = [k for k in mine if mine[k] != theirs[k]]
        raise ConfigError(f"the oracle's tokenizer ({oracle_tokenizer}) differs from the original's "
                          f"({original_tokenizer}) in its {', '.join(what)}; both models must read the same tokens")

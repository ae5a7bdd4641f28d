"""scikit-learn's digits for class-conditional diffusion: 16x16 images in [-1, 1] with their class.

Besides `x` and `y`, every split carries `pseudo_y`, the class whose (frozen) prediction is an example's
denoising target: -1, the true noise, for all real data. The diffusion task's `relabel` fills it in, and
keeping the column in the data means relabelled forget batches and plain retain batches share their keys
and can be concatenated into one step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearn.data.sources import load_digits
from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.errors import ConfigError
from unlearn.knobs import NON_NEGATIVE_INT, OPEN_FRACTION, Range, declare

NOISE_TARGET = -1  # pseudo_y of an example trained against the true noise


@declare(split_seed=NON_NEGATIVE_INT, val_fraction=OPEN_FRACTION, limit=Range(1, integer=True, optional=True), test_fraction=OPEN_FRACTION, image_size=Range(8, integer=True))
def load_digits_gen(image_size: int = 16, split_seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1,
                    limit: int | None = None) -> DataBundle:
    """The bundled 8x8 digits (same splits as `load_digits`), bilinearly upsampled to `image_size`."""
    if image_size < 8:
        raise ConfigError(f"data.image_size={image_size}: the digits are 8x8, so it must be at least 8")
    digits = load_digits(split_seed=split_seed, test_fraction=test_fraction, val_fraction=val_fraction, limit=limit)
    # load_digits standardises pixels in [0, 1] with train statistics, an increasing affine map; the train
    # split holds both blank (0) and full-ink (1) pixels, so its min and max undo that map exactly.
    low, high = digits.train["x"].min(), digits.train["x"].max()

    def to_diffusion(split: TensorData) -> TensorData:
        unit = (split["x"] - low) / (high - low)
        x = F.interpolate(unit, size=(image_size, image_size), mode="bilinear", align_corners=False)
        y = split["y"]
        return TensorData(x=(2 * x - 1).clamp(-1, 1).contiguous(), y=y, pseudo_y=torch.full_like(y, NOISE_TARGET))

    return DataBundle(name="digits_gen", train=to_diffusion(digits.train), val=to_diffusion(digits.val),
                      test=to_diffusion(digits.test),
                      info={**digits.info, "image_size": int(image_size)})

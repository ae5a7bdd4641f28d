"""Printed digits rendered from the fonts matplotlib ships: a labelled image set outside any training set D.

Exact methods built on a frozen pretrained backbone (S3T) need data the backbone can learn from that no
deletion request can ever reach. For CIFAR or ImageNet that is a public pretrained checkpoint; for the
bundled 8x8 handwritten digits none exists offline, so this module makes one: each example is a digit glyph
of a random font among the DejaVu/STIX/Computer Modern families, with a random stroke width, rotation, scale,
shear and offset, rendered at 32x32 and box-filtered down to the digits' 8x8 grid with its 17 grey levels
(scikit-learn's digits are 4x4 block counts of 32x32 bitmaps, 0..16). Deterministic per seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, NON_NEGATIVE_INT, declare

# Families with ordinary digit glyphs (the symbol fonts have none).
FONT_FILES = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSansMono", "DejaVuSansMono-Bold",
              "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic", "STIXGeneral", "STIXGeneralBol",
              "STIXGeneralItalic", "cmr10", "cmss10", "cmtt10", "cmb10")
RENDER = 32  # pixels per side before the 4x4 box filter, as for the original digits


def _fonts() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    found = [folder / f"{name}.ttf" for name in FONT_FILES if (folder / f"{name}.ttf").exists()]
    if not found:
        raise ConfigError(f"no digit fonts found under {folder} (matplotlib's bundled fonts)")
    return found


@declare(n=COUNT, seed=NON_NEGATIVE_INT, size=COUNT)
def font_digits(n: int = 3000, seed: int = 0, size: int = 8) -> TensorData:
    """`n` printed digits, balanced over the 10 classes: x (n, 1, size, size) float in [0, 1], y (n,) int64.

    Raises ConfigError if n < 10 (every class needs an example) or size does not divide 32."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    if n < 10:
        raise ConfigError(f"font_digits needs n >= 10 (one per class), got {n}")
    if RENDER % size:
        raise ConfigError(f"font_digits size={size} must divide {RENDER}")
    rng = np.random.default_rng(seed)
    fonts = _fonts()
    labels = np.arange(n) % 10
    images = np.empty((n, size, size), dtype=np.float32)
    for i, digit in enumerate(labels):
        # Glyph at twice the render size, slanted and rotated, then size-normalised like the original bitmaps:
        # its bounding box scaled to fill most of the 32-pixel height, aspect kept, centred.
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), size=2 * RENDER)
        glyph = Image.new("L", (4 * RENDER, 4 * RENDER))
        ImageDraw.Draw(glyph).text((2 * RENDER, 2 * RENDER), str(digit), fill=255, font=font, anchor="mm",
                                   stroke_width=int(rng.integers(0, 5)), stroke_fill=255)
        shear = rng.uniform(-0.3, 0.3)
        glyph = glyph.transform(glyph.size, Image.Transform.AFFINE, (1, shear, -shear * 2 * RENDER, 0, 1, 0),
                                resample=Image.Resampling.BILINEAR)
        glyph = glyph.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR).crop(glyph.getbbox())
        height = RENDER * rng.uniform(0.8, 1.0)
        width = min(RENDER, max(2.0, glyph.width * height / glyph.height * rng.uniform(0.8, 1.25)))
        glyph = glyph.resize((round(width), round(height)), Image.Resampling.LANCZOS)
        frame = Image.new("L", (RENDER, RENDER))
        frame.paste(glyph, ((RENDER - glyph.width) // 2 + int(rng.integers(-2, 3)), (RENDER - glyph.height) // 2))
        if rng.random() < 0.5:
            frame = frame.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
        small = np.asarray(frame.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
        images[i] = np.round(small / max(small.max(), 1e-6) * 16) / 16  # full ink at the darkest cell, 17 levels
    order = rng.permutation(n)
    return TensorData(x=torch.from_numpy(images[order, None]), y=torch.as_tensor(labels[order], dtype=torch.long))

"""Printed digits (S3T's pretraining data outside D for data=digits): balanced, on the digits' grid, seeded."""
import numpy as np
import pytest
import torch

from unlearn.data.font_digits import font_digits
from unlearn.errors import ConfigError


def test_balanced_on_the_digits_grid_and_seeded():
    a, b, c = font_digits(40, seed=0), font_digits(40, seed=0), font_digits(40, seed=1)
    assert a["x"].shape == (40, 1, 8, 8) and a["y"].dtype == torch.long
    assert np.bincount(a["y"].numpy(), minlength=10).tolist() == [4] * 10
    levels = a["x"] * 16
    assert torch.equal(levels, levels.round()) and a["x"].min() == 0 and a["x"].max() == 1  # 17 grey levels
    assert torch.equal(a["x"], b["x"]) and not torch.equal(a["x"], c["x"])
    # Size-normalised like the originals: the ink reaches the top and bottom rows' neighbourhood.
    assert (a["x"][:, 0, :2].sum(dim=(1, 2)) > 0).float().mean() > 0.5
    # Glyphs differ by class: the mean image of a 1 is narrower than that of a 0.
    zero, one = a["x"][a["y"] == 0].mean(0)[0], a["x"][a["y"] == 1].mean(0)[0]
    assert (zero[:, [1, 6]].sum() > one[:, [1, 6]].sum())


@pytest.mark.parametrize("kwargs", [{"n": 5}, {"size": 7}])
def test_refuses_impossible_sizes(kwargs):
    with pytest.raises(ConfigError):
        font_digits(**kwargs)

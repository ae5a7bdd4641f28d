"""model=airbench: the whitening layer, its recipe under data=cifar10, stacking, and a run end to end on a tiny
CIFAR-format file set."""
from __future__ import annotations

import torch

from conftest import compose_config
from test_data import write_cifar
from unlearn.data.tensordata import TensorData
from unlearn.models.airbench import WHITENING_EPS, AirBench
from unlearn.runtime import Runtime
from unlearn.tasks.classification import ClassificationTask
from unlearn.training import OptimConfig

SMALL = dict(num_classes=4, in_channels=3, width1=8, width2=8, width3=8)


def test_whitening_decorrelates_the_training_patches():
    torch.manual_seed(0)
    # Neighbouring pixels and channels correlated: a running sum along the rows plus a shared channel term.
    images = torch.randn(300, 3, 16, 16).cumsum(-1) / 4 + torch.randn(300, 1, 16, 16)
    model = AirBench(**SMALL)
    model.init_from_data(images)
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 12).double()
    # What the layer's convolution outputs (its first half of filters), per position: the whitened patches.
    white = torch.nn.functional.conv2d(images.double(), model.whiten_weight[:12].double())
    white = white.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = white.T @ white / len(white)
    eigenvalues = torch.linalg.eigvalsh(patches.T @ patches / len(patches))
    # Whitened covariance = diag(λ / (λ + eps)): the identity up to the regulariser.
    expected = torch.diag((eigenvalues / (eigenvalues + WHITENING_EPS)).sort().values)
    assert torch.allclose(covariance.diag().sort().values, expected.diag(), atol=1e-6)
    assert (covariance - torch.diag(covariance.diag())).abs().max() < 1e-6
    assert torch.equal(model.whiten_weight[12:], -model.whiten_weight[:12])


def test_shapes_and_frozen_parts():
    model = AirBench(**SMALL)
    assert model(torch.randn(5, 3, 32, 32)).shape == (5, 4)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "whiten_bias" in trained and not any(name.endswith("norm1.weight") for name in trained)
    assert "whiten_weight" in dict(model.named_buffers())


def test_recipe_comes_with_the_model_on_cifar10():
    cfg = compose_config("data=cifar10", "model=airbench")
    assert cfg.data.train.batch_size == 1024 and cfg.data.train.lr == 1.5 and cfg.data.task.crop_padding == 2
    assert compose_config("data=cifar10").data.train.batch_size == 256  # resnet18 keeps the papers' recipe


def test_airbench_stacks(tmp_path):
    """A stacked airbench member equals the one trained alone (whitening from its own data, frozen BN scale)."""
    torch.manual_seed(0)
    data = TensorData(x=torch.randn(48, 3, 32, 32), y=torch.randint(0, 4, (48,)))
    task = ClassificationTask(num_classes=4, crop_padding=2, flip=True)
    recipe = OptimConfig(epochs=2, lr=0.2, batch_size=16, momentum=0.85, weight_decay=1e-3)
    runtime = Runtime(torch.device("cpu"))

    def fresh(seed):
        torch.manual_seed(seed)
        return AirBench(**SMALL)

    alone = task.fit(fresh(1), data, recipe, runtime, torch.Generator().manual_seed(5)).state_dict()
    stacked = task.fit_stacked([fresh(1), fresh(2)], data, recipe, runtime,
                               [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)])[0].state_dict()
    assert max(float((alone[k].double() - stacked[k].double()).abs().max()) for k in alone) < 1e-4
    assert not torch.equal(alone["whiten_weight"], fresh(1).whiten_weight)  # whitened from the data


def test_airbench_runs_end_to_end_on_cifar_files(tmp_path, run_experiment):
    write_cifar(tmp_path, n_train=24, n_test=20)
    row = run_experiment("data=cifar10", "model=airbench", f"data.source.root={tmp_path}", "data.source.download=false",
                         "model.width1=8", "model.width2=16", "model.width3=16", "data.train.epochs=3",
                         "data.train.batch_size=32", "method=ga", "method.epochs=1", cache_dir=tmp_path / "cache")
    assert row["status"] == "ok" and row["model"] == "AirBench"
    assert row["config"]["data"]["train"]["momentum"] == 0.85  # the airbench recipe, not resnet18's
    assert 0 <= row["metrics"]["TA"] <= 100 and row["reference"]["original"]["RA"] > 0

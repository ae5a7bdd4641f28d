"""The diffusion task: its metrics on known answers, SalUn's pseudo-class loss, seeded sampling, and the
shared methods run unchanged through the real pipeline on a tiny class-conditional DDPM."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unlearn.data.digits_gen import NOISE_TARGET, load_digits_gen
from unlearn.data.sources import load_digits
from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError
from unlearn.eval.diffusion import class_hit_rate, frechet_distance, gaussian_frechet_distance
from unlearn.models.ddpm import ClassConditionalDDPM
from unlearn.pipeline import Experiment
from unlearn.runtime import Runtime
from unlearn.tasks.base import Splits
from unlearn.tasks.diffusion import DiffusionTask

from conftest import compose_config

CPU = Runtime.from_config("cpu", "fp32", False)

# A tiny DDPM on 200 digits, a 3-epoch judge and a few short DDIM trajectories: every stage runs, quickly.
TINY_DIFFUSION = [
    "data=digits_gen", "forget=class", "forget.classes=[0]", "device=cpu",
    "data.source.limit=200", "data.train.epochs=15", "data.train.lr=3e-3", "data.train.batch_size=32",
    "model.block_out_channels=[8,16]", "model.norm_num_groups=4",
    "data.task.samples_per_class=4", "data.task.sampling_steps=4", "data.task.judge_train.epochs=3",
]
# The diffusion recipe of the unlearning step (the method yamls carry the classifier's SGD settings).
ADAM = ["method.optimizer=adam", "method.lr=2e-3", "method.weight_decay=0", "method.epochs=2", "method.batch_size=32"]


def tiny_model(num_classes: int = 3, cond_dropout: float = 0.1) -> ClassConditionalDDPM:
    torch.manual_seed(0)
    return ClassConditionalDDPM(num_classes, sample_size=8, block_out_channels=(8, 16), norm_num_groups=4,
                                num_train_timesteps=50, cond_dropout=cond_dropout)


def image_batch(n: int = 6, num_classes: int = 3) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    y = torch.arange(n) % num_classes
    return {"x": torch.rand((n, 1, 8, 8), generator=generator) * 2 - 1, "y": y,
            "pseudo_y": torch.full_like(y, NOISE_TARGET)}


# ---- metrics --------------------------------------------------------------------------------------
def test_frechet_distance_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-8)
    cov = np.cov(features, rowvar=False)
    assert gaussian_frechet_distance(np.ones(6), cov, np.ones(6), cov) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_shifted_means_is_squared_shift():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(300, 4)) @ rng.normal(size=(4, 4))
    shift = np.array([1.0, -2.0, 0.5, 3.0])
    # Same covariance, so only the means differ: the distance is |Δμ|² = 1 + 4 + 0.25 + 9.
    assert frechet_distance(features, features + shift) == pytest.approx(14.25, rel=1e-9)


def test_frechet_distance_of_diagonal_gaussians_compares_standard_deviations():
    # Commuting covariances: tr(Σa + Σb − 2(ΣaΣb)^½) = Σ (σa − σb)².
    sd_a, sd_b = np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 1.0])
    distance = gaussian_frechet_distance(np.zeros(3), np.diag(sd_a**2), np.zeros(3), np.diag(sd_b**2))
    assert distance == pytest.approx(1.0 + 0.0 + 4.0)


def test_class_hit_rate_averages_per_class():
    conditioned = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    judged = np.array([0, 0, 0, 1, 1, 0, 2, 2])
    assert class_hit_rate(judged, conditioned, [0]) == pytest.approx(75.0)
    assert class_hit_rate(judged, conditioned, [1, 2]) == pytest.approx(75.0)   # (50 + 100) / 2
    assert class_hit_rate(judged, conditioned, [0, 1, 2]) == pytest.approx(75.0)
    assert np.isnan(class_hit_rate(judged, conditioned, [5]))


# ---- data and loss ---------------------------------------------------------------------------------
def test_digits_gen_is_upsampled_digits_in_unit_range():
    data, plain = load_digits_gen(image_size=16), load_digits()
    assert data.train["x"].shape[1:] == (1, 16, 16) and len(data.train) == len(plain.train)
    assert torch.equal(data.train["y"], plain.train["y"]) and torch.equal(data.test["y"], plain.test["y"])
    assert data.train["x"].min() == -1 and data.train["x"].max() == 1
    assert data.test["x"].min() >= -1 and data.test["x"].max() <= 1
    assert (data.train["pseudo_y"] == NOISE_TARGET).all()
    with pytest.raises(ConfigError, match="at least 8"):
        load_digits_gen(image_size=4)


def test_loss_is_the_noise_prediction_error():
    model, batch = tiny_model().eval(), image_batch()
    task = DiffusionTask(num_classes=3)
    torch.manual_seed(5)
    losses = task.loss(model, batch)
    torch.manual_seed(5)  # the same draws, by hand
    t = torch.randint(0, 50, (6,))
    noise = torch.randn(batch["x"].shape)
    expected = (model(model.add_noise(batch["x"], noise, t), t, batch["y"]) - noise).pow(2).mean((1, 2, 3))
    assert losses.shape == (6,) and torch.allclose(losses, expected)


def test_relabel_picks_another_real_class():
    task = DiffusionTask(num_classes=3)
    batch = image_batch(n=300)
    pseudo = task.relabel(batch, torch.Generator().manual_seed(0))["pseudo_y"]
    assert (pseudo != batch["y"]).all() and pseudo.min() >= 0 and pseudo.max() <= 2
    assert set(pseudo[batch["y"] == 0].tolist()) == {1, 2}


def test_relabel_loss_is_zero_when_the_prediction_ignores_the_class():
    """ℓ_f = MSE(ε(x_t, c_f), stopgrad ε(x_t, c_pseudo)): a model blind to the class has nothing to forget."""
    task, batch = DiffusionTask(num_classes=3), image_batch()
    model = tiny_model().eval()
    relabelled = task.relabel(batch, torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    assert task.loss(model, relabelled).abs().max() > 1e-6  # a class-aware model does move
    with torch.no_grad():
        model.unet.class_embedding.weight.zero_()
    torch.manual_seed(3)
    assert torch.allclose(task.loss(model, relabelled), torch.zeros(6), atol=1e-10)


def test_relabel_loss_matches_the_stopgrad_pseudo_class_target():
    task, model = DiffusionTask(num_classes=3), tiny_model()
    batch = image_batch()
    relabelled = task.relabel(batch, torch.Generator().manual_seed(0))
    # Half the batch relabelled, half plain: each row gets its own target (as in a forget ∪ retain step).
    mixed = {**relabelled, "pseudo_y": torch.where(torch.arange(6) < 3, relabelled["pseudo_y"], NOISE_TARGET)}
    torch.manual_seed(7)
    losses = task.loss(model, mixed)
    losses[:3].sum().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    torch.manual_seed(7)
    t = torch.randint(0, 50, (6,))
    noise = torch.randn(batch["x"].shape)
    drop = torch.rand(6) < model.cond_dropout  # train mode: only the plain rows may lose their class
    x_t = model.add_noise(batch["x"], noise, t)
    with torch.no_grad():
        prediction = model(x_t, t, batch["y"])
        pseudo_target = model(x_t, t, mixed["pseudo_y"].clamp_min(0))
        plain = model(x_t, t, torch.where(drop, model.null_class, batch["y"]))
    expected = torch.cat([(prediction - pseudo_target).pow(2).mean((1, 2, 3))[:3],
                          (plain - noise).pow(2).mean((1, 2, 3))[3:]])
    assert torch.allclose(losses.detach(), expected, atol=1e-6)


def test_class_dropout_only_in_train_mode():
    task, model, batch = DiffusionTask(num_classes=3), tiny_model(cond_dropout=0.5), image_batch(n=64, num_classes=3)
    torch.manual_seed(0)
    train_loss = task.loss(model.train(), batch)
    torch.manual_seed(0)
    eval_loss = task.loss(model.eval(), batch)
    assert not torch.allclose(train_loss, eval_loss)  # some classes were dropped to the null class


# ---- sampling and evaluation -----------------------------------------------------------------------
def test_sampling_is_deterministic_for_a_seed():
    task = DiffusionTask(num_classes=3, sampling_steps=3, guidance_scale=2.0)
    model = tiny_model()
    classes = torch.tensor([0, 1, 2, 0])
    first, again = task.sample(model, classes, CPU, seed=0), task.sample(model, classes, CPU, seed=0)
    other = task.sample(model, classes, CPU, seed=1)
    assert first.shape == (4, 1, 8, 8) and torch.equal(first, again) and not torch.equal(first, other)
    assert model.training  # sampling restores the model's mode


def test_class_roles_refuse_forget_sets_that_leave_no_class():
    task = DiffusionTask(num_classes=3)
    data = TensorData(**image_batch(n=9))
    by_class = Splits(forget=data.subset(np.array([0, 3, 6])), retain=data.subset(np.array([1, 2, 4, 5])),
                      test=data, val=data)
    forgotten, remaining = task.class_roles(by_class)
    assert forgotten.tolist() == [0] and remaining.tolist() == [1, 2]
    mixed = Splits(forget=data.subset(np.array([0, 1])), retain=data.subset(np.array([3, 4, 5])), test=data, val=data)
    with pytest.raises(ConfigError, match="forget=class"):
        task.class_roles(mixed)


# ---- the shared methods through the real pipeline ---------------------------------------------------
def original_and_forget(overrides: list[str], cache_dir: Path) -> tuple[Experiment, torch.nn.Module, TensorData]:
    """The run's original (from the cache the run filled) and its forget set."""
    experiment = Experiment(compose_config(*overrides, f"cache_dir={cache_dir}"))
    return experiment, experiment.prepare().original, experiment.splits().forget


def relabel_loss_on_forget(task: DiffusionTask, model, forget: TensorData) -> float:
    """SalUn's forget loss at fixed pseudo classes, timesteps and noise: what RL and SalUn minimise."""
    relabelled = task.relabel(dict(forget.tensors), torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        return float(task.denoising_loss(model, relabelled, torch.Generator().manual_seed(0)).mean())


@pytest.mark.parametrize("method", ["ga", "graddiff", "rl", "salun"])
def test_shared_methods_unlearn_the_diffusion_model(method, run_experiment, shared_cache):
    overrides = [*TINY_DIFFUSION, f"method={method}", *ADAM]
    row = run_experiment(*overrides, tiny=False)
    assert row["status"] == "ok" and row["task"] == "diffusion"
    assert set(row["metrics"]) >= {"UA", "retain_acc", "fd", "forget_mse", "retain_mse"}
    assert (Path(row["run_dir"]) / "generations.png").stat().st_size > 5_000  # original / oracle / method rows
    original_metrics = row["reference"]["original"]
    experiment, original, forget = original_and_forget(overrides, shared_cache)
    unlearned = experiment.models.model_from_state(torch.load(Path(row["run_dir"]) / "model.pt"))
    changed = [not torch.equal(a, b) for a, b in zip(unlearned.state_dict().values(), original.state_dict().values())]
    assert any(changed)
    if method in ("ga", "graddiff"):
        # Ascent on the forget class's denoising loss: the class becomes harder to denoise.
        assert row["metrics"]["forget_mse"] > 1.5 * original_metrics["forget_mse"]
    else:
        # The forget class's prediction is pulled toward other classes' predictions.
        task = experiment.task
        assert relabel_loss_on_forget(task, unlearned, forget) < 0.8 * relabel_loss_on_forget(task, original, forget)
    if method == "salun":
        # Only the salient half of the weights may move; the rest stay exactly at θo.
        params = dict(original.named_parameters())
        moved = sum(int((p != params[n]).sum()) for n, p in unlearned.named_parameters())
        assert 0.25 < moved / sum(p.numel() for p in params.values()) <= 0.5


def test_per_example_gradients_of_the_pseudo_class_loss():
    """IU and FF take per-example gradients with torch.func.vmap, where the loss cannot pick rows by value:
    the relabelled rows of a class-blind model still have zero loss, hence zero gradient."""
    from unlearn.methods.fisher import per_example_gradients

    task, model = DiffusionTask(num_classes=3), tiny_model()
    with torch.no_grad():
        model.unet.class_embedding.weight.zero_()
    batch = image_batch()
    relabelled = task.relabel(batch, torch.Generator().manual_seed(0))
    mixed = {**relabelled, "pseudo_y": torch.where(torch.arange(6) < 3, relabelled["pseudo_y"], NOISE_TARGET)}
    torch.manual_seed(0)
    grads = torch.cat(list(per_example_gradients(model, task, TensorData(**mixed), batch_size=6)))
    assert grads.shape == (6, sum(p.numel() for p in model.parameters()))
    assert torch.all(grads[:3] == 0) and torch.all(grads[3:].abs().sum(1) > 0)


def test_digits_gen_forgets_a_class_by_default_and_the_command_line_still_wins():
    from conftest import compose_config

    assert compose_config("data=digits_gen").forget._target_.endswith("ClassForget")
    assert compose_config("data=digits_gen", "forget=random").forget._target_.endswith("RandomForget")
    assert compose_config().forget._target_.endswith("RandomForget")  # the embedded default is unchanged


def test_diffusion_refuses_example_wise_forgetting_before_training(tmp_path):
    """UA and retain_acc compare forgotten classes with the rest: a random forget set is refused up front."""
    from conftest import compose_config

    with pytest.raises(ConfigError, match="removes examples, not classes"):
        Experiment(compose_config("data=digits_gen", "forget=random", f"cache_dir={tmp_path}", "threads=1"))
    assert not any(tmp_path.iterdir())  # nothing trained, nothing cached
    Experiment(compose_config("data=digits_gen", "forget=worst_case_class", f"cache_dir={tmp_path}", "threads=1"))


def test_salun_trains_alike_whether_its_mask_was_computed_or_cached(run_experiment):
    """The mask's loss draws noise; computing it must not move the RNG the unlearning then draws from, or a run
    that loads the mask from the cache trains differently from the run that computed it."""
    overrides = [*TINY_DIFFUSION, "method=salun", "method.mask_ratio=0.45", *ADAM]
    computed, cached = (run_experiment(*overrides, tiny=False) for _ in range(2))
    strip = lambda m: {k: v for k, v in m.items() if "RTE" not in k}  # noqa: E731
    assert strip(computed["metrics"]) == strip(cached["metrics"])

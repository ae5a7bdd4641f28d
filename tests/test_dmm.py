"""Data attribution (TRAK per logit) and the methods built on it: dmm, oracle_matching, dm_direct."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unlearn.attribution import Attribution, Projection, Trak
from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError, UnsupportedTaskError
from unlearn.models.cnn import SmallCNN
from unlearn.pipeline import Experiment
from unlearn.runtime import Runtime
from unlearn.tasks.classification import ClassificationTask

from conftest import TINY, compose_config

CPU = Runtime.from_config("cpu", "fp32", False)
SMALL_ATTRIBUTION = ["attribution.models=2", "attribution.proj_dim=128"]


def predict_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits as the classification task evaluates them (what the matching methods read too)."""
    return torch.from_numpy(ClassificationTask(10).predict_logits(model, TensorData(x=x), CPU))


def tiny_attribution(n_models: int = 2, proj_dim: int = 48) -> tuple[Attribution, TensorData]:
    torch.manual_seed(0)
    models = [SmallCNN(10, 1, 4) for _ in range(n_models)]
    train = TensorData(x=torch.randn(60, 1, 8, 8), y=torch.randint(0, 10, (60,)))
    trak = Trak(models=n_models, proj_dim=proj_dim, batch_size=16)
    return trak.attribution(models, trak.fit(models, train), CPU), train


def test_projection_adjoint_is_its_transpose_and_seeded():
    shapes = {"a": torch.Size([3, 5]), "b": torch.Size([40])}
    projection = Projection(shapes, dim=16, seed=1)
    vectors = {name: torch.randn(4, *shape) for name, shape in shapes.items()}
    w = torch.randn(16)
    adjoint = projection.adjoint(w)
    direct = projection.project(vectors) @ w
    through_adjoint = sum((vectors[n].flatten(1) * adjoint[n].flatten()).sum(1) for n in shapes)
    assert torch.allclose(direct, through_adjoint, atol=1e-4)
    assert torch.equal(Projection(shapes, 16, seed=1).project(vectors), projection.project(vectors))
    assert not torch.equal(Projection(shapes, 16, seed=2).project(vectors), projection.project(vectors))


def test_projection_preserves_inner_products_on_average():
    # CountSketch is unbiased: E[<Pu, Pv>] = <u, v> over seeds.
    shapes = {"w": torch.Size([200])}
    u, v = torch.randn(1, 200), torch.randn(1, 200)
    estimates = [float(Projection(shapes, 64, seed=s).project({"w": u}) @ Projection(shapes, 64, seed=s).project({"w": v}).T)
                 for s in range(200)]
    assert np.mean(estimates) == pytest.approx(float(u @ v.T), abs=0.15 * float(u.norm() * v.norm()))


def test_predicted_change_is_the_sum_of_forget_scores():
    attribution, _ = tiny_attribution()
    x, forget = torch.randn(5, 1, 8, 8), np.array([0, 3, 7, 11])
    scores = attribution.scores(x, forget)
    assert scores.shape == (4, 5, 10)
    change = attribution.predicted_change(x, attribution.removal_directions(forget))
    assert torch.allclose(change, scores.sum(0), atol=1e-5)
    assert change.abs().max() > 0
    nothing = attribution.predicted_change(x, attribution.removal_directions(np.array([], dtype=np.int64)))
    assert torch.all(nothing == 0)
    with pytest.raises(ConfigError, match="train indices"):
        attribution.removal_directions(np.array([60]))


@pytest.mark.parametrize("kernel", ["newton", "trak"])
def test_scores_follow_the_formula(kernel):
    """β[i, x, c] = (P ∇logit_c(x)) · (ΦᵀRΦ + λI)⁻¹ φ_i q_i (R = q(1 − q) or I), built here by hand for one model."""
    torch.manual_seed(0)
    model = SmallCNN(10, 1, 4)
    train = TensorData(x=torch.randn(60, 1, 8, 8), y=torch.randint(0, 10, (60,)))
    trak = Trak(models=1, proj_dim=48, batch_size=16, kernel=kernel, damping=1e-3)
    attribution = trak.attribution([model], trak.fit([model], train), CPU)
    member = attribution.members[0]
    phi, q = trak.train_features(member.model, member.projection, train)
    phi, q = phi.double(), q.double()
    weights = q * (1 - q) if kernel == "newton" else torch.ones_like(q)
    kernel_matrix = phi.T @ (phi * weights[:, None])
    kernel_matrix += (1e-3 * kernel_matrix.diagonal().mean() + 1e-12) * torch.eye(48, dtype=torch.float64)
    x = torch.randn(2, 1, 8, 8)
    member.model.eval()
    grads = []
    for example in x:
        for c in range(10):
            member.model.zero_grad()
            member.model(example[None])[0, c].backward()
            grads.append({n: p.grad.detach().clone()[None] for n, p in member.model.named_parameters()})
    target = torch.cat([member.projection.project(g) for g in grads]).double()          # (2·10, p)
    expected = (target @ torch.linalg.solve(kernel_matrix, (phi * q[:, None]).T)).T.reshape(60, 2, 10)
    assert torch.allclose(attribution.scores(x, np.arange(60)).double(), expected, rtol=1e-3, atol=1e-4)


def test_attribution_predicts_retrained_outputs_on_forget_better_than_the_original(shared_cache):
    """θo − m·Σ_F β is closer to the retrained models' mean logits on F than θo itself is. Class-wise: on 300
    digits a random 10% leaves an effect below the seed-to-seed noise of a few retrains, a whole class does not."""
    experiment = Experiment(compose_config(*TINY, "forget=class", *SMALL_ATTRIBUTION, f"cache_dir={shared_cache}"))
    art = experiment.prepare()
    x = experiment.splits().forget["x"]
    attribution = experiment.stage.attribution()
    change = attribution.predicted_change(x, attribution.removal_directions(experiment.request.forget.indices))
    retrained = torch.stack([predict_logits(m, x) for m in experiment.stage.matching_oracles(2, None)]).mean(0)
    original = predict_logits(art.original, x)
    before = (original - retrained).pow(2).mean()
    after = (original - change - retrained).pow(2).mean()   # the default multiplier, 1
    assert after < 0.93 * before   # measured 0.86


@pytest.mark.parametrize("method", ["dmm", "oracle_matching"])
def test_matching_methods_move_theta_toward_their_targets(method, run_experiment, shared_cache):
    overrides = [f"method={method}", *SMALL_ATTRIBUTION, "method.oracles=2" if method == "oracle_matching" else "method.multiplier=2",
                 "method.epochs=20"]
    row = run_experiment(*overrides)
    assert row["status"] == "ok" and row["timings"]["precompute_s"]
    experiment = Experiment(compose_config(*TINY, *overrides, f"cache_dir={shared_cache}"))
    art = experiment.prepare()
    forget = experiment.splits().forget["x"]
    unlearned = experiment.models.new_model(0, "load")
    unlearned.load_state_dict(torch.load(Path(row["run_dir"]) / "model.pt")["state_dict"])
    ctx_targets = experiment.method.targets(_Ctx(experiment, art), forget)
    before = (predict_logits(art.original, forget) - ctx_targets).pow(2).mean()
    after = (predict_logits(unlearned, forget) - ctx_targets).pow(2).mean()
    assert after < 0.5 * before


class _Ctx:
    """The parts of UnlearnContext that `targets` reads, from an experiment that already ran."""

    def __init__(self, experiment: Experiment, art):
        self.task, self.runtime = experiment.task, experiment.runtime
        self.original = art.original
        self.forget_indices = experiment.request.forget.indices
        self.attribution = experiment.stage.attribution
        self.oracles = lambda n: experiment.stage.matching_oracles(n, None)


def test_matching_oracles_are_not_the_evaluation_oracles(shared_cache):
    experiment = Experiment(compose_config(*TINY, "eval.oracles=3", f"cache_dir={shared_cache}"))
    assert not set(experiment.member_seeds(3, "matching")) & set(experiment.member_seeds(3))
    assert experiment.member_seeds(3)[0] == experiment.seed


def test_dm_direct_is_the_prediction_and_gets_population_metrics(run_experiment, shared_cache):
    row = run_experiment("method=dm_direct", "method.multiplier=10", "eval.oracles=3", *SMALL_ATTRIBUTION)
    assert row["status"] == "ok" and np.isfinite(row["metrics"]["klom_forget"])
    assert row["metrics"]["kl_forget"] != row["reference"]["original"]["kl_forget"]
    saved = torch.load(Path(row["run_dir"]) / "model" / "prediction.pt")
    assert saved["multiplier"] == 10.0 and len(saved["ensemble"]) == 2
    experiment = Experiment(compose_config(*TINY, "method=dm_direct", "method.multiplier=10", "eval.oracles=3",
                                           *SMALL_ATTRIBUTION, f"cache_dir={shared_cache}"))
    art = experiment.prepare()
    splits = experiment.splits()
    attribution = experiment.stage.attribution()
    x = splits.forget["x"]
    expected = predict_logits(art.original, x) - 10.0 * attribution.predicted_change(
        x, attribution.removal_directions(experiment.request.forget.indices))
    unlearned, status, _ = experiment.stage.unlearn(art, splits)
    assert status == "ok" and torch.allclose(predict_logits(unlearned, x), expected, atol=1e-5)


def test_attribution_methods_refuse_other_tasks():
    for method in ("dmm", "dm_direct", "oracle_matching"):
        with pytest.raises(UnsupportedTaskError, match="classification"):
            Experiment(compose_config("data=facts", f"method={method}"))


def test_bad_attribution_settings_fail_clearly():
    with pytest.raises(ConfigError, match="proj_dim"):
        Experiment(compose_config("attribution.proj_dim=0"))
    with pytest.raises(ConfigError, match="kernel"):
        Experiment(compose_config("attribution.kernel=exact"))
    with pytest.raises(ConfigError, match="method.oracles"):
        Experiment(compose_config("method=oracle_matching", "method.oracles=0"))
    with pytest.raises(ConfigError, match="retain_per_forget"):
        Experiment(compose_config("method=dmm", "method.retain_per_forget=-1"))


def test_dmm_runs_on_the_cifar10_config(tmp_path, run_experiment):
    """The CIFAR-10 / ResNet-18 configuration end to end, on a tiny file set in the official format."""
    from test_data import write_cifar

    write_cifar(tmp_path / "data", n_train=20, n_test=10)
    row = run_experiment("data=cifar10", f"data.source.root={tmp_path / 'data'}", "data.source.download=false",
                         "model.width=4", "data.train.epochs=2", "data.train.batch_size=32", "device=cpu", "threads=1",
                         "method=dmm", "method.epochs=2", "attribution.models=2", "attribution.proj_dim=64",
                         "attribution.batch_size=16", tiny=False)
    assert row["status"] == "ok" and row["data"] == "cifar10" and row["timings"]["precompute_s"]["attribution"] > 0
    assert np.isfinite(row["metrics"]["UA"]) and np.isfinite(row["metrics"]["kl_forget"])

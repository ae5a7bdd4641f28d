"""Worst-case forget sets (bilevel selection) and published forget sets read from a file."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from tests.conftest import TINY, compose_config
from unlearn.data.forget import Reference
from unlearn.data.from_file import FromFileForget
from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.data.worst_case import (SignGradients, WorstCaseClassForget, WorstCaseForget, project_capped_simplex,
                                     top_m)
from unlearn.errors import ConfigError
from unlearn.pipeline import Experiment
from unlearn.runtime import derive_seed

# The bilevel search shrunk for tests: 3 selection steps, one lower-level epoch each.
FAST = ("forget.upper_epochs=3", "forget.lower_epochs=1", "forget.batch_size=128")
FAST_KNOBS = dict(upper_epochs=3, lower_epochs=1, batch_size=128)


# ---- projection onto {lo <= w <= hi, sum w = m} ------------------------------------------------------
def test_projection_meets_sum_and_bounds():
    v = torch.randn(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    w = project_capped_simplex(v, 7.0)
    assert w.sum().item() == pytest.approx(7.0, abs=1e-9)
    assert w.min() >= 0 and w.max() <= 1
    # One shift for every entry: those strictly inside the box all moved by the same τ, and order is kept.
    inside = (w > 0) & (w < 1)
    assert inside.any() and torch.allclose(v[inside] - w[inside], (v[inside] - w[inside])[0].expand(int(inside.sum())))
    order = torch.argsort(v)
    assert (w[order].diff() >= 0).all()


def test_projection_leaves_a_feasible_point_unchanged():
    v = torch.tensor([0.2, 0.0, 1.0, 0.3, 0.5], dtype=torch.float64)
    assert torch.allclose(project_capped_simplex(v, 2.0), v, atol=1e-12)


def test_projection_known_answers():
    # Uniform: every entry shifts by the same τ = 0.25.
    uniform = project_capped_simplex(torch.full((4,), 0.5), 1.0)
    assert torch.allclose(uniform, torch.full((4,), 0.25, dtype=torch.float64))
    # By hand: τ = 0.3 gives clip([0.9, 0.6, -0.2, -0.6]) = [0.9, 0.6, 0, 0], which sums to 1.5.
    v = torch.tensor([1.2, 0.9, 0.1, -0.3])
    assert torch.allclose(project_capped_simplex(v, 1.5), torch.tensor([0.9, 0.6, 0.0, 0.0], dtype=torch.float64))
    # Other bounds: τ = -0.1 gives clip([0.1, 0.2, 0.3, 1.0], 0.2, 0.5) = [0.2, 0.2, 0.3, 0.5], which sums to 1.2.
    w = project_capped_simplex(torch.tensor([0.0, 0.1, 0.2, 0.9]), 1.2, lo=0.2, hi=0.5)
    assert torch.allclose(w, torch.tensor([0.2, 0.2, 0.3, 0.5], dtype=torch.float64))


@pytest.mark.parametrize("m", [5.0, -0.5])
def test_projection_refuses_an_unreachable_sum(m):
    with pytest.raises(ConfigError, match="sum must lie in"):
        project_capped_simplex(torch.zeros(4), m)


def test_top_m_breaks_ties_by_index():
    assert top_m(torch.tensor([0.5, 1.0, 0.5, 0.5]), 3).tolist() == [1, 0, 2]


# ---- the builders on a trained tiny original ---------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(shared_cache):
    """The pipeline's own stages up to the oracle with forget=worst_case (FAST): the runs below reuse them.
    Returns (experiment, data, forget set, reference to the original)."""
    exp = Experiment(compose_config(*TINY, f"cache_dir={shared_cache}", "forget=worst_case", *FAST))
    art = exp.prepare()
    forget, _, _ = exp.request.forget_set(art.original, art.original_key)
    return exp, exp.data()[0], forget, Reference(exp.task, art.original, art.original_key, exp.runtime)


def test_selection_has_the_asked_size_and_is_deterministic(prepared):
    exp, data, forget, reference = prepared
    n_train = len(data.train)
    assert len(forget.indices) == round(0.1 * n_train) == forget.description["size"]
    assert len(np.unique(forget.indices)) == len(forget.indices)
    assert forget.indices.min() >= 0 and forget.indices.max() < n_train
    again = exp.builder.build(data, derive_seed(exp.seed, "forget"), reference)
    assert np.array_equal(again.indices, forget.indices)


def test_selected_set_is_harder_to_forget_than_a_random_one(prepared):
    """The same lower-level unlearning leaves the chosen set with a lower loss than a random set of its size."""
    exp, data, forget, reference = prepared
    train, builder = data.train, exp.builder
    n_train, units = len(train), torch.arange(len(train))

    def loss_after_unlearning(indices: np.ndarray) -> float:
        keep = torch.ones(n_train)
        keep[indices] = 0
        model = builder.unlearn_keeping(reference, train, units, keep, torch.Generator().manual_seed(1))
        return builder.unit_losses(reference, model, train, units, n_train)[indices].mean().item()

    random_set = np.random.default_rng(0).choice(n_train, size=len(forget.indices), replace=False)
    worst, random = loss_after_unlearning(forget.indices), loss_after_unlearning(random_set)
    assert worst < 0.5 * random, (worst, random)


def test_l1_shrinks_the_lower_level_parameters(prepared):
    _, data, _, reference = prepared
    train, units = data.train, torch.arange(len(data.train))
    l1_norm = {}
    for l1 in (0.0, 10.0):
        builder = WorstCaseForget(l1=l1, **FAST_KNOBS)
        keep_all = torch.ones(len(train))
        model = builder.unlearn_keeping(reference, train, units, keep_all, torch.Generator().manual_seed(0))
        l1_norm[l1] = sum(p.abs().sum().item() for p in model.parameters())
    assert l1_norm[10.0] < l1_norm[0.0]


class Iterates(SignGradients):
    """SignSGD hooks that keep a copy of the model after every step: the straightforward tail to compare with."""

    def __init__(self):
        self.models = []

    def after_step(self, model, optimizer):
        self.models.append(copy.deepcopy(model))


@pytest.mark.parametrize("tail_steps", [1, 2, 1000])
def test_tail_losses_are_the_mean_over_the_last_iterates(prepared, tail_steps):
    """The unit losses evaluated inside the lower level equal those of copies of its last iterates evaluated
    afterwards, and evaluating them does not change the trajectory (train mode comes back between steps)."""
    _, data, _, reference = prepared
    train, units, n = data.train, torch.arange(len(data.train)), len(data.train)
    builder = WorstCaseForget(upper_epochs=1, lower_epochs=2, batch_size=128, tail_steps=tail_steps)
    keep = torch.linspace(0.5, 1.0, n)
    fast = builder.lower_level_losses(reference, train, units, n, keep, torch.Generator().manual_seed(3))
    iterates = Iterates()
    builder.unlearn_keeping(reference, train, units, keep, torch.Generator().manual_seed(3), hooks=iterates)
    tail = iterates.models[-min(tail_steps, len(iterates.models)):]
    straight = torch.stack([builder.unit_losses(reference, m, train, units, n) for m in tail]).mean(0)
    assert len(iterates.models) == 2 * -(-n // 128)
    assert fast.dtype == torch.float64 and torch.allclose(fast, straight, rtol=1e-6, atol=1e-9)
    if tail_steps > 1:  # the mean really covers more than the last iterate
        assert not torch.allclose(fast, builder.unit_losses(reference, iterates.models[-1], train, units, n))


def test_paper_mode_is_the_plain_bilevel_loop(prepared):
    """resolve_every=1, tail_steps=1 selects what the straightforward loop of the paper selects: a fresh lower
    level from the original at every upper step, then the projected step on w."""
    _, data, _, reference = prepared
    train, units, n = data.train, torch.arange(len(data.train)), len(data.train)
    builder = WorstCaseForget(upper_epochs=3, lower_epochs=1, batch_size=128, resolve_every=1, tail_steps=1)
    m = round(0.1 * n)
    generator, w = torch.Generator().manual_seed(5), torch.full((n,), m / n, dtype=torch.float64)
    for _ in range(3):
        model = builder.unlearn_keeping(reference, train, units, 1 - w, generator)
        w = project_capped_simplex(w - builder.lr_w * builder.unit_losses(reference, model, train, units, n), m)
    chosen, _ = builder.select(reference, train, np.arange(n), m, 5)
    assert chosen.tolist() == sorted(top_m(w, m).tolist())


@pytest.mark.parametrize("resolve_every, solves", [(1, 3), (2, 2), (3, 1), (10, 1)])
def test_resolve_every_re_solves_the_lower_level_that_often(prepared, monkeypatch, resolve_every, solves):
    _, data, _, reference = prepared
    builder = WorstCaseForget(upper_epochs=3, lower_epochs=1, batch_size=128, resolve_every=resolve_every)
    calls = []
    real = builder.lower_level_losses
    monkeypatch.setattr(builder, "lower_level_losses", lambda *a: calls.append(1) or real(*a))
    builder.select(reference, data.train, np.arange(len(data.train)), 10, 0)
    assert len(calls) == solves


def test_class_wise_selection_picks_whole_classes_and_drops_them_from_test(prepared):
    _, data, _, reference = prepared
    forget = WorstCaseClassForget(num_classes=2, **FAST_KNOBS).build(data, 0, reference)
    classes = forget.description["classes"]
    train_y, test_y = data.train["y"].numpy(), data.test["y"].numpy()
    assert len(classes) == 2
    assert np.array_equal(forget.indices, np.flatnonzero(np.isin(train_y, classes)))
    assert np.array_equal(forget.test_indices, np.flatnonzero(~np.isin(test_y, classes)))


def test_a_validation_request_is_the_worst_case_among_what_the_request_leaves(prepared):
    """Drawn by the same search from the same original, as large as F and sharing none of its examples; with F's
    units out of the candidates the search does not return F."""
    exp, data, forget, reference = prepared
    validation = exp.builder.validation(data, forget, seed=7, reference=reference)
    assert len(validation.indices) == len(forget.indices) and validation.description["validation"]
    assert not set(validation.indices.tolist()) & set(forget.indices.tolist())
    again = exp.builder.validation(data, forget, seed=7, reference=reference)
    assert np.array_equal(again.indices, validation.indices)
    classes = WorstCaseClassForget(num_classes=2, **FAST_KNOBS)
    reported = classes.build(data, 0, reference)
    other = classes.validation(data, reported, seed=3, reference=reference)
    assert len(other.description["classes"]) == 2
    assert not set(other.description["classes"]) & set(reported.description["classes"])
    assert not np.isin(data.test["y"].numpy()[other.test_indices], other.description["classes"]).any()
    with pytest.raises(ConfigError, match="needs more than 10 classes"):
        WorstCaseClassForget(num_classes=5, **FAST_KNOBS).check_validation(data)


def test_candidates_restrict_the_search_and_background_groups_are_never_chosen(prepared):
    """Units outside `candidates` keep weight 0 (the lower level always keeps them); a grouped train split's negative
    group (background knowledge, e.g. world facts) is never a candidate of forget=worst_case."""
    exp, data, _, reference = prepared
    builder = exp.builder
    ids = np.arange(len(data.train)) % 20 - 1  # groups -1..18: -1 is background
    train = TensorData(**data.train.tensors, group=torch.as_tensor(ids))
    grouped = DataBundle(name="grouped", train=train, val=data.val, test=data.test, info=data.info)
    forget = WorstCaseForget(count=3, **FAST_KNOBS).build(grouped, 0, reference)
    assert len(forget.description["groups"]) == 3 and -1 not in forget.description["groups"]
    chosen, _ = builder.select(reference, data.train, np.arange(len(data.train)) % 10, 2, 0, candidates=np.array([4, 7, 9]))
    assert set(chosen.tolist()) <= {4, 7, 9} and len(chosen) == 2


# ---- whole runs --------------------------------------------------------------------------------------
def test_worst_case_runs_in_the_pipeline_and_its_saved_set_reloads(run_experiment, prepared, tmp_path):
    row = run_experiment("forget=worst_case", "method=ga", *FAST)
    assert row["status"] == "ok" and row["forget"]["builder"] == "worst_case"
    saved = json.loads((tmp_path / row["run_dir"] / "forget_indices.json").read_text())
    assert saved["indices"] == prepared[2].indices.tolist()

    again = run_experiment("forget=from_file", f"forget.path={tmp_path / row['run_dir'] / 'forget_indices.json'}",
                           "method=ga")
    assert again["forget"]["builder"] == "from_file" and again["forget"]["size"] == row["forget"]["size"]
    assert again["forget"]["source"]["builder"] == "worst_case"
    # The same forget set: the same (cached) oracle and, with the same seed, the same unlearned model.
    for metric in ("UA", "RA", "TA", "MIA", "RTE_s"):
        assert again["reference"]["oracle"][metric] == row["reference"]["oracle"][metric]
    for metric in ("UA", "RA", "TA", "MIA"):
        assert again["metrics"][metric] == row["metrics"][metric]


def test_worst_case_class_runs_in_the_pipeline(run_experiment):
    row = run_experiment("forget=worst_case_class", "method=ft", "method.epochs=2", *FAST)
    assert row["status"] == "ok" and len(row["forget"]["classes"]) == 1
    # The oracle never saw the forgotten class: it gets none of it right.
    assert row["reference"]["oracle"]["UA"] == 100.0


# ---- bad settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    (dict(ratio=1.5), "ratio must lie strictly between"),
    (dict(count=0), "count must be a positive integer"),
    (dict(upper_epochs=0), "upper_epochs must be a positive integer"),
    (dict(lr_w=-0.1), "lr_w must be >= 0"),
    (dict(resolve_every=0), "resolve_every must be a positive integer"),
    (dict(tail_steps=2.5), "tail_steps must be a positive integer"),
])
def test_bad_knobs_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        WorstCaseForget(**kwargs)


def tiny_bundle(n_train: int = 10, n_classes: int = 3) -> DataBundle:
    def split(n):
        return TensorData(x=torch.zeros(n, 1, 2, 2), y=torch.arange(n) % n_classes)

    return DataBundle("tiny", split(n_train), split(4), split(6), {"num_classes": n_classes})


def test_class_wise_refuses_forgetting_every_class_and_needs_the_original():
    with pytest.raises(ConfigError, match="every class present"):
        WorstCaseClassForget(num_classes=3).check(tiny_bundle())
    with pytest.raises(ConfigError, match="trained original"):
        WorstCaseClassForget(num_classes=1).build(tiny_bundle(), 0, None)


# ---- forget=from_file --------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    ('{"indices": [1, 2', "not valid JSON"),
    ('{"forget": [1, 2]}', 'without "indices"'),
    ('"1, 2"', "must be a JSON list"),
    ("[]", "lists no indices"),
    ("[1, 2, 2]", r"repeat \[2\]"),
    ("[1, 2.5]", "must be integers"),
    ("[1, -3]", "must be non-negative"),
])
def test_from_file_refuses_malformed_files(tmp_path, content, message):
    path = tmp_path / "forget.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        FromFileForget(str(path))


@pytest.mark.parametrize("indices, message", [
    (list(range(10)), "nothing would be left"),
    ([3, 10], "only 10 training examples"),
])
def test_from_file_refuses_sets_that_do_not_fit_the_data(tmp_path, indices, message):
    path = tmp_path / "forget.json"
    path.write_text(json.dumps(indices))
    with pytest.raises(ConfigError, match=message):
        FromFileForget(str(path)).build(tiny_bundle(), 0)


def test_from_file_needs_an_existing_path(tmp_path):
    with pytest.raises(ConfigError, match="needs forget.path"):
        FromFileForget(None)
    with pytest.raises(ConfigError, match="no such file"):
        FromFileForget(str(tmp_path / "missing.json"))


def test_from_file_reads_a_plain_list_and_test_indices(tmp_path):
    path = tmp_path / "forget.json"
    path.write_text(json.dumps({"indices": [7, 2, 4], "test_indices": [0, 5]}))
    forget = FromFileForget(str(path)).build(tiny_bundle(), 0)
    assert forget.indices.tolist() == [2, 4, 7] and forget.test_indices.tolist() == [0, 5]
    path.write_text("[7, 2]")
    builder = FromFileForget(str(path))
    assert builder.build(tiny_bundle(), 0).test_indices is None
    # The cached set is keyed by the file's content, so an edited file is not mistaken for the old one.
    path.write_text("[7, 3]")
    assert FromFileForget(str(path)).cache_fields() != builder.cache_fields()

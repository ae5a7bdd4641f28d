"""Populations trained stacked (torch.func vmap over stacked weights): a member equals the same member trained
alone, does not depend on the stack's size, and shares its cache entry with the sequential path."""
from __future__ import annotations

import logging

import pytest

import torch

from unlearn.cache import content_key
from unlearn.config import compose_config
from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError, DivergedError
from unlearn.models.cnn import SmallCNN
from unlearn.pipeline import Experiment
from unlearn.runtime import Runtime
from unlearn.tasks.classification import ClassificationTask
from unlearn.training import OptimConfig, StackedModels, Streams, optimise_stacked

from conftest import TINY

TOL = 1e-5


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def fresh(seed: int) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN(num_classes=4, in_channels=1, width=4)


@pytest.fixture
def setting():
    torch.manual_seed(0)
    data = TensorData(x=torch.randn(96, 1, 8, 8), y=torch.randint(0, 4, (96,)))
    task = ClassificationTask(num_classes=4, crop_padding=1, flip=True)
    recipe = OptimConfig(epochs=3, lr=0.05, batch_size=32, schedule="cosine", warmup_epochs=1)
    return task, data, recipe, Runtime(torch.device("cpu"))


def test_stacked_member_equals_the_member_trained_alone(setting):
    task, data, recipe, runtime = setting
    seeds = [3, 4, 5]
    alone = []
    for seed in seeds:
        model = fresh(seed)
        task.fit(model, data, recipe, runtime, torch.Generator().manual_seed(100 + seed))
        alone.append(model.state_dict())
    stacked = [m.state_dict() for m in task.fit_stacked([fresh(s) for s in seeds], data, recipe, runtime,
                                                         [torch.Generator().manual_seed(100 + s) for s in seeds])]
    for one, member in zip(alone, stacked):
        assert max_difference(one, member) < TOL  # weights, BN running statistics and their step counts
    # The members really differ (own init, data order and augmentation), so the check above is not vacuous.
    assert max_difference(stacked[0], stacked[1]) > 1e-2


def test_a_member_does_not_depend_on_the_stack_size(setting):
    task, data, recipe, runtime = setting
    results = []
    for seeds in ([7], [7, 8], [7, 8, 9, 10]):
        models = task.fit_stacked([fresh(s) for s in seeds], data, recipe, runtime,
                                  [torch.Generator().manual_seed(s) for s in seeds])
        results.append(models[0].state_dict())
    assert max_difference(results[0], results[1]) < TOL and max_difference(results[0], results[2]) < TOL


def test_a_diverging_member_is_named(setting):
    task, data, _, runtime = setting
    explode = OptimConfig(epochs=2, lr=1e6, batch_size=32, momentum=0.0, weight_decay=0.0)
    stack = StackedModels([fresh(s) for s in (1, 2)])
    with pytest.raises(DivergedError, match="member"):
        optimise_stacked(stack, lambda m, f, r: -task.loss(m, r).mean() * 1e30, Streams(retain=data), explode,
                         runtime, [torch.Generator().manual_seed(s) for s in (1, 2)])


def test_union_stream_is_refused(setting):
    task, data, recipe, runtime = setting
    with pytest.raises(ValueError, match="union"):
        optimise_stacked(StackedModels([fresh(1), fresh(2)]), lambda m, f, r: task.loss(m, r).mean(),
                         Streams(forget=data, retain=data, mode="union"), recipe, runtime,
                         [torch.Generator(), torch.Generator()])


def experiment(tmp_path, *overrides) -> Experiment:
    return Experiment(compose_config(*TINY, "data.train.epochs=4", "eval.stacked=true", f"cache_dir={tmp_path / 'cache'}",
                                     f"results_dir={tmp_path / 'out'}", *overrides))


def test_stacked_members_have_keys_of_their_own_shared_across_population_sizes(tmp_path):
    """A stacked original is its seed's model up to float rounding, under a key of its own (a full recipe amplifies
    the rounding), which a run with another N reuses; the run's own seed is never a stacked member."""
    exp = experiment(tmp_path, "eval.oracles=3")
    seeds = exp.member_seeds(3)
    assert not exp.stack.member(seeds[0]) and exp.stack.member(seeds[2])
    exp.stack.train("original", seeds)
    # Saved as soon as the stack is trained (under their locks, so a job that needs one waits for the stack); not
    # the run's own.
    assert [exp.cache.contains(exp.models.dense_original_key(seed)) for seed in seeds] == [False, True, True]
    data, _ = exp.data()
    payload, key, cached = exp.models.original(seeds[2], None)
    assert cached and payload["stacked"] == 2
    assert key != content_key("original", **exp.models.common_key_fields(seeds[2]))
    sequential = exp.models.train(seeds[2], data.train, "original", None)
    assert max_difference(sequential["state_dict"], payload["state_dict"]) < 1e-3
    assert experiment(tmp_path, "eval.oracles=5").models.original(seeds[2], None)[2]  # another N finds it cached


def test_the_runs_own_row_does_not_depend_on_the_population(tmp_path):
    rows = [experiment(tmp_path, "method=ga", "method.epochs=2", f"eval.oracles={n}").run() for n in (1, 3)]
    for name in ("UA", "RA", "TA", "MIA", "kl_forget"):
        assert rows[0]["metrics"][name] == rows[1]["metrics"][name]
    assert "klom_forget" in rows[1]["metrics"]


def test_method_population_runs_stacked_and_matches_the_sequential_method(tmp_path, caplog):
    exp = experiment(tmp_path, "method=ga", "method.epochs=2")
    seeds = exp.member_seeds(3)[1:]
    arts = [exp.prepare(None, seed) for seed in seeds]
    splits = exp.splits()
    with caplog.at_level(logging.INFO, logger="unlearn"):
        stacked = exp.stack.unlearn(exp, arts, splits)
    assert "runs stacked" in caplog.text
    for art, member in zip(arts, stacked):
        alone, status, _ = exp.stage.unlearn(art, splits)
        assert status == "ok" and max_difference(alone.state_dict(), member.state_dict()) < TOL
        assert max_difference(art.original.state_dict(), member.state_dict()) > 1e-3  # GA really moved it


def test_methods_that_cannot_be_stacked_fall_back_and_say_so(tmp_path, caplog):
    exp = experiment(tmp_path, "method=rl")  # random labels are drawn from the member's generator inside the objective
    arts = [exp.prepare(None, seed) for seed in exp.member_seeds(2)]
    with caplog.at_level(logging.INFO, logger="unlearn"):
        assert exp.stack.unlearn(exp, arts, exp.splits()) is None
    assert "not stacked" in caplog.text and "stackable_objective" in caplog.text


def test_stacking_can_be_switched_off(tmp_path):
    exp = experiment(tmp_path, "eval.oracles=3", "eval.stacked=false")
    assert exp.stack.why_not() == "eval.stacked=false" and not exp.stack.member(exp.member_seeds(3)[1])
    auto = experiment(tmp_path, "eval.oracles=3", "eval.stacked=auto")  # on CPU, where stacking measured slower
    assert "GPU only" in auto.stack.why_not() and not auto.stack.member(auto.member_seeds(3)[1])
    with pytest.raises(ConfigError, match="eval.stacked"):
        experiment(tmp_path, "eval.stacked=sometimes")

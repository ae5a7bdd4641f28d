"""A stream of forget requests F1, F2, … (DESIGN.md, "Scenarios"; reference/exact_continual.md).

After step k the method has processed F1..Fk, each step continuing from its own previous model: the method's
`original` at step k is its model after step k−1, `forget` is the request Fk and `retain` is
D \\ (F1 ∪ … ∪ Fk). The oracle of step k is the pipeline's retrain without F1 ∪ … ∪ Fk, cached by that
retained set (and the model seed and recipe), so every method — and every stream that reaches the same
retained set — shares it. One row per step: the task's metrics on the current request, `earlier_*` metrics on
everything forgotten before (a rebound shows there), the step's RTE and the cumulative `cum_RTE_s`; for class
streams also GS-LoRA's continual-forgetting figures on the test split (acc_f, acc_r, acc_old, drop_f, h_mean).

With `method.eval_every` each step records its trajectory against its oracle; with `method.select=best_val` each
step ends at the checkpoint chosen on the request before it (docs/tuning.md, "Streams"): step k on F_{k-1}, step 1
on F0, one more request drawn after the stream's and never reported.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from unlearn.cache import content_key
from unlearn.codehash import code_digest
from unlearn.config import plain
from unlearn.data.concept import ConceptForget
from unlearn.data.forget import ClassForget, ForgetSet, RandomForget
from unlearn.data.tensordata import DataBundle
from unlearn.errors import ConfigError
from unlearn.eval.continual import class_group_accuracy, h_mean
from unlearn.knobs import COUNT, OneOf, Range
from unlearn.pipeline import Artifacts, Experiment, Step, save_model
from unlearn.pipeline.step import unlearned_identity
from unlearn.pipeline.trajectory import make_trajectory
from unlearn.pipeline.store import seed_stage
from unlearn.report.loggers import Logger
from unlearn.report.compare import steps_table
from unlearn.runtime import Clock, derive_seed
from unlearn.tasks.base import Splits

KINDS = ("ids", "classes", "concepts")


class Sequence:
    """`scenario=sequence`: `steps` requests of `kind` ids (each a random batch of forget.ratio / forget.count
    of the training set, drawn from what is still retained), classes (each `classes_per_step` classes) or
    concepts (text-to-image: one concept of the world per step, `concepts` in that order or drawn), in an order
    drawn from `stream_seed` (default: the run's seed). A fixed `seed` with several `stream_seed`s
    runs many streams against the same trained models. `oracle=false` skips the per-step retrain (for exact
    methods, whose oracle is themselves by construction): oracle-relative metrics are then absent."""

    name = "sequence"
    knobs = {"steps": COUNT, "kind": OneOf(KINDS), "classes_per_step": COUNT,
             "stream_seed": Range(0, integer=True, optional=True), "oracle": OneOf((True, False))}

    def __init__(self, steps: int = 4, kind: str = "ids", classes_per_step: int = 2, stream_seed: int | None = None,
                 oracle: bool = True, concepts: list[str] | None = None):
        if int(steps) != steps or steps < 1:
            raise ConfigError(f"scenario.steps must be an integer >= 1, got {steps}")
        if kind not in KINDS:
            raise ConfigError(f"scenario.kind={kind!r} is not one of {', '.join(KINDS)}")
        if int(classes_per_step) != classes_per_step or classes_per_step < 1:
            raise ConfigError(f"scenario.classes_per_step must be an integer >= 1, got {classes_per_step}")
        self.steps, self.kind, self.classes_per_step = int(steps), kind, int(classes_per_step)
        self.stream_seed, self.oracle = (None if stream_seed is None else int(stream_seed)), bool(oracle)
        self.concepts = None if concepts is None else [str(c) for c in concepts]
        if self.concepts is not None and (kind != "concepts" or len(self.concepts) != self.steps):
            raise ConfigError(f"scenario.concepts={self.concepts} names the requests of a concept stream: use it with "
                              f"scenario.kind=concepts and scenario.steps={len(self.concepts)}")
        self._requests: list[ForgetSet] = []  # the stream's requests, for the metrics on earlier ones
        self.validation: ForgetSet | None = None  # F0 of method.select=best_val (see `requests`)

    # ---- the stream ---------------------------------------------------------------------------
    def requests(self, experiment: Experiment) -> list[ForgetSet]:
        """The requests F1..F_steps, seeded by the run's seed; ConfigError (before training) if impossible. With
        `method.select=best_val` one more, F0, drawn after them like them (so F1..F_steps are the same with or
        without it) and kept as `self.validation`: the earlier request step 1 selects its checkpoint on."""
        data, _ = experiment.data()
        seed = experiment.seed if self.stream_seed is None else self.stream_seed
        rng = np.random.default_rng(derive_seed(seed, "stream", self.kind))
        draw = {"ids": self._id_requests, "classes": self._class_requests, "concepts": self._concept_requests}
        selecting = experiment.protocol.select == "best_val"
        requests = draw[self.kind](data, rng, experiment, self.steps + int(selecting))
        self.validation = requests.pop() if selecting else None
        if self.validation is not None:
            self.validation.description |= {"step": 0, "validation": True}
        return requests

    def _id_requests(self, data: DataBundle, rng: np.random.Generator, experiment: Experiment,
                     count: int) -> list[ForgetSet]:
        builder = experiment.builder
        if not isinstance(builder, RandomForget):
            raise ConfigError(f"scenario.kind=ids draws each request with forget=random's ratio/count, but "
                              f"forget={builder.name}; use forget=random (or scenario.kind=classes)")
        units = builder._units(data)
        size = builder._size(len(units))
        if size * count >= len(units):
            extra = " (one more than scenario.steps: the validation request of method.select=best_val)" \
                if count > self.steps else ""
            raise ConfigError(f"{count} requests{extra} of {size} would remove {size * count} of the "
                              f"{len(units)} training units and empty the training set; lower scenario.steps "
                              f"or forget.ratio/forget.count")
        order = rng.permutation(units)
        grouped = "group" in data.train.keys()
        requests = []
        for k in range(count):
            chosen = np.sort(order[k * size:(k + 1) * size])
            indices = np.flatnonzero(np.isin(data.train["group"].cpu().numpy(), chosen)) if grouped else chosen
            requests.append(ForgetSet(indices=indices, test_indices=None,
                                      description={"builder": "random", "ratio": builder.ratio, "count": builder.count,
                                                   "size": int(len(indices)), "step": k + 1}))
        return requests

    def _class_requests(self, data: DataBundle, rng: np.random.Generator, experiment: Experiment,
                        count: int) -> list[ForgetSet]:
        n_classes = int(data.info.get("num_classes", 0))
        if not n_classes:
            raise ConfigError(f"scenario.kind=classes needs a data set with classes; {data.name!r} has none "
                              f"(use scenario.kind=ids)")
        experiment.task.check_forget(ClassForget([0]))  # the task must score class requests (classifiers, DDPMs)
        wanted = count * self.classes_per_step
        if wanted >= n_classes:
            steps = f"({self.steps} + 1 for method.select=best_val's validation request)" if count > self.steps \
                else f"scenario.steps={self.steps}"
            raise ConfigError(f"{steps} × classes_per_step={self.classes_per_step} = {wanted} "
                              f"classes, but {data.name!r} has {n_classes} and at least one must remain")
        order = rng.permutation(n_classes)
        requests = []
        for k in range(count):
            classes = sorted(int(c) for c in order[k * self.classes_per_step:(k + 1) * self.classes_per_step])
            request = ClassForget(classes).build(data, 0)
            request.description["step"] = k + 1
            requests.append(request)
        return requests

    def _concept_requests(self, data: DataBundle, rng: np.random.Generator, experiment: Experiment,
                          count: int) -> list[ForgetSet]:
        builder = experiment.builder
        if not isinstance(builder, ConceptForget):
            raise ConfigError(f"scenario.kind=concepts erases concepts of a text-to-image world (data=shapes_t2i, "
                              f"forget=concept), not forget={builder.name}")
        axes: dict[str, list[str]] = data.info["axes"]
        concepts = self._draw_concepts(axes, rng) if self.concepts is None else self.concepts
        if count > len(concepts):
            concepts = [*concepts, self._validation_concept(data, builder, concepts, rng)]
        requests, resolved_concepts = [], []
        for k, concept in enumerate(concepts):
            one = ConceptForget(concept=concept, guide=builder.guide)
            resolved = one.resolve(data)
            if resolved.concept in resolved_concepts:
                raise ConfigError(f"scenario.concepts names {resolved.concept!r} twice")
            request = one.build(data, 0)
            request.description["step"] = k + 1
            requests.append(request)
            resolved_concepts.append(resolved.concept)
        for axis, values in axes.items():
            if all(v in resolved_concepts[:self.steps] for v in values):
                raise ConfigError(f"scenario.concepts would erase every {axis} of the world ({', '.join(values)}); "
                                  f"at least one must remain")
        return requests

    def _draw_concepts(self, axes: dict[str, list[str]], rng: np.random.Generator) -> list[str]:
        """`steps` concepts in a seeded order, never every value of an axis."""
        pairs = [(axis, value) for axis, values in axes.items() for value in values]
        left = {axis: len(values) for axis, values in axes.items()}
        chosen = []
        for i in rng.permutation(len(pairs)):
            axis, value = pairs[i]
            if len(chosen) < self.steps and left[axis] > 1:
                chosen.append(value)
                left[axis] -= 1
        if len(chosen) < self.steps:
            raise ConfigError(f"scenario.steps={self.steps} concepts would erase every value of an axis of the world "
                              f"(it has {len(pairs)} concepts on {len(axes)} axes); lower scenario.steps")
        return chosen

    @staticmethod
    def _validation_concept(data: DataBundle, builder: ConceptForget, concepts: list[str],
                            rng: np.random.Generator) -> str:
        """F0 of a concept stream: a value of F1's axis that the stream does not erase and that is not the guide, so
        its images and prompts are apart from F1's (concepts of other axes share images with it), drawn from `rng`."""
        first = ConceptForget(concept=concepts[0], guide=builder.guide).resolve(data)
        erased = {ConceptForget(concept=c).resolve(data).concept for c in concepts}
        pool = [v for v in data.info["axes"][first.axis] if v not in erased and v != first.guide]
        if not pool:
            raise ConfigError(f"method.select=best_val in a concept stream chooses step 1's checkpoint on another "
                              f"{first.axis} than {first.concept!r}, and the stream erases every other one (or it is the "
                              f"guide); erase fewer {first.axis}s or drop method.select")
        return pool[int(rng.integers(len(pool)))]

    def cumulative(self, requests: list[ForgetSet], data: DataBundle) -> ForgetSet:
        """F1 ∪ … ∪ Fk (with, for class streams, the test split left without any forgotten class)."""
        indices = np.unique(np.concatenate([r.indices for r in requests]))
        description = {"builder": "sequence", "kind": self.kind, "steps": self.steps, "step": len(requests),
                       "size": int(len(indices))}
        if self.kind == "classes":
            classes = sorted(c for r in requests for c in r.description["classes"])
            test_keep = np.flatnonzero(~np.isin(data.test["y"].cpu().numpy(), classes))
            return ForgetSet(indices, test_keep, description | {"classes": classes})
        if self.kind == "concepts":
            return ForgetSet(indices, None, description | {"concepts": [r.description["concept"] for r in requests]})
        return ForgetSet(indices, None, description | {"ratio": requests[0].description["ratio"],
                                                       "count": requests[0].description["count"]})

    # ---- the run ------------------------------------------------------------------------------
    def check(self, experiment: Experiment) -> None:
        """What a stream cannot carry, refused before anything trains."""
        if experiment.n_models > 1:
            raise ConfigError("scenario=sequence runs one model per step; population metrics (eval.oracles > 1) "
                              "are not computed per step, use eval.oracles=1")
        if not self.oracle and experiment.method.uses_oracle:
            raise ConfigError(f"method={experiment.method.name} is built from the oracle, which scenario.oracle=false "
                              f"skips; set scenario.oracle=true")
        if experiment.tuning.trial:
            raise ConfigError("tuning trials run on scenario=single (a stream selects each step's checkpoint on the "
                              "request before it: method.select=best_val); drop scenario=sequence")
        if not self.oracle and experiment.protocol.eval_every is not None:
            raise ConfigError("method.eval_every and method.select measure the trajectory against each step's oracle, "
                              "which scenario.oracle=false skips; set scenario.oracle=true")
        if getattr(experiment.builder, "adds_data", False):
            raise ConfigError(f"scenario=sequence draws its requests from the training set, but forget="
                              f"{experiment.builder.name} adds data to it; use scenario=single for forget="
                              f"{experiment.builder.name}")

    def run(self, experiment: Experiment, *, run_dir: Path | None = None, loggers: list[Logger] | None = None,
            labels: dict | None = None, command: str = "") -> dict[str, Any]:
        """One row per step (each logged as it is made); returns the last step's row. Each step is the pipeline's
        one step (`unlearn.pipeline.Step`), starting from the model the step before made, under that model's
        identity (so what is cached from it, a weight mask say, is never another run's)."""
        loggers, labels = loggers or [], labels or {}
        self.check(experiment)
        data, data_key = experiment.data()
        requests = self._requests = self.requests(experiment)  # refuses an impossible stream before anything trains
        runs = [(r, requests[:k + 1]) for k, r in enumerate(requests)]
        if self.validation is not None:
            runs.append((self.validation, [self.validation]))
        for request, upto in runs:  # method.eval_every beyond a run's steps: refused before anything trains
            experiment.check_trajectory(self._splits(data, request, self.cumulative(upto, data)))
        cfg = experiment.cfg
        for lg in loggers:
            lg.start(run_dir, plain(cfg))
        on_epoch = lambda stage, epoch, loss: [lg.log_epoch(stage, epoch, loss) for lg in loggers]  # noqa: E731
        model_seed = experiment.seed
        t0 = time.perf_counter()
        original, original_key, payload, original_cached = experiment.models.original_model(model_seed, on_epoch)
        masks = payload.get("masks")
        timings = {"original_s": time.perf_counter() - t0, "original_cached": original_cached}

        model, identity, status = original, original_key, "ok"
        totals = {"unlearned": Clock(0.0, 0.0), "oracle": Clock(0.0, 0.0)}
        rows = []
        entered = []  # (model, identity) that entered each step: where the next step's validation run starts
        for k in range(1, self.steps + 1):
            request, cum = requests[k - 1], self.cumulative(requests[:k], data)
            earlier = self.cumulative(requests[:k - 1], data) if k > 1 else None
            key = self._key(data_key, request, cum)
            selection = None
            if self.validation is not None and status == "ok":  # chosen before this step's request is looked at
                start = (original, original_key) if k == 1 else entered[k - 2]
                selection = self._select(experiment, k, start, masks, on_epoch)
            entered.append((model, identity))
            # a task that reads the request itself (t2i) takes this step's own request
            experiment.request.set_forget(cum, key, request)
            t0 = time.perf_counter()
            if self.oracle:
                oracle, oracle_key, oracle_payload, oracle_cached = experiment.models.oracle_model(model_seed, masks,
                                                                                                 on_epoch)
            else:
                oracle_payload, oracle_key, oracle_cached, oracle = {}, None, False, None
            step_timings = timings | {"oracle_s": time.perf_counter() - t0, "oracle_cached": oracle_cached}
            art = Artifacts(model_seed, model, identity, oracle, oracle_key, Clock.of(oracle_payload, "train_"),
                            step_timings)
            splits = self._splits(data, request, cum)
            before = model

            def extra(m, role, before=before, earlier=earlier, request=request, cum=cum, splits=splits):
                return self._stream_metrics(experiment, m, before if role == "unlearned" else original, splits,
                                            earlier, request, cum)

            def finish(metrics, original_metrics, oracle_metrics, seconds, art=art):
                totals["unlearned"] += seconds
                totals["oracle"] += art.oracle_time
                metrics |= {"cum_RTE_s": totals["unlearned"].wall, "cum_RTE_cpu_s": totals["unlearned"].cpu}
                original_metrics |= {"cum_RTE_s": float("nan"), "cum_RTE_cpu_s": float("nan")}
                if oracle_metrics:
                    oracle_metrics |= {"cum_RTE_s": totals["oracle"].wall, "cum_RTE_cpu_s": totals["oracle"].cpu}

            step_dir = Path(run_dir) / f"step_{k}" if run_dir is not None else None
            fields = {"scenario": self.name, "step": k, "steps": self.steps, "request": request.description,
                      "stream_seed": experiment.seed if self.stream_seed is None else self.stream_seed}
            if selection is not None:
                fields["selection"] = selection
            record = {"request": request.indices.tolist(), "cumulative": cum.indices.tolist(),
                      "description": request.description}
            trajectory = make_trajectory(experiment, art, splits, key,
                                         stop_at=None if selection is None else selection["position"])
            # A diverged method has no model to continue from: the rest of the stream is NaN.
            row, unlearned = Step(art, splits, original, original_key, on_epoch, extra, fields, record,
                                  diverged_before=status != "ok", trajectory=trajectory).run(
                experiment, run_dir=step_dir, loggers=loggers, labels=labels, command=command, save_model=False,
                finish=finish)
            status = row["status"]
            rows.append(row)
            model, identity = unlearned, unlearned_identity(identity, experiment, key, model_seed)
        if run_dir is not None and model is not None and cfg.save_model:
            save_model(model, Path(run_dir), experiment.model_config)
        print("\n" + steps_table(rows) + "\n", flush=True)
        return rows[-1]

    def _key(self, data_key: str, request: ForgetSet, cum: ForgetSet) -> str:
        """The identity of a step's request: this request, after everything up to it (`cum`)."""
        return content_key("stream-step", code=code_digest(type(self)), data=data_key, request=request.indices,
                           forget=cum.indices, test=cum.test_indices)

    def _select(self, experiment: Experiment, k: int, start: tuple, masks: dict | None, on_epoch) -> dict[str, Any]:
        """The row's `selection` of step k (method.select=best_val): the checkpoint chosen on the request before it
        (docs/tuning.md). At step k >= 2 that is F_{k-1}, processed again from the model that entered step k-1,
        against step k-1's oracle (cached); at step 1 it is F0, a request drawn after the stream's like them, from
        the original, against the retrain without F0. Step k's own request is never looked at."""
        data, data_key = experiment.data()
        if k == 1:
            request, cum = self.validation, self.cumulative([self.validation], data)
        else:
            request, cum = self._requests[k - 2], self.cumulative(self._requests[:k - 1], data)
        key = self._key(data_key, request, cum)
        model, identity = start
        nan = float("nan")
        begin = Artifacts(experiment.seed, model, identity, None, None, Clock(nan, nan), {})
        validation = experiment.selection.oracle_of(begin, cum, on_epoch, masks=masks)
        splits = self._splits(data, request, cum)
        return experiment.selection.run(validation, splits, cum, key, on_epoch, task_request=request)

    @staticmethod
    def _splits(data: DataBundle, request: ForgetSet, cum: ForgetSet, forget: np.ndarray | None = None) -> Splits:
        test = data.test if cum.test_indices is None else data.test.subset(cum.test_indices)
        return Splits(forget=data.train.subset(request.indices if forget is None else forget),
                      retain=data.train.subset(cum.retain_indices(len(data.train))), test=test, val=data.val)

    def _earlier_concepts(self, experiment: Experiment, model, splits: Splits, k: int, names: list[str]) -> dict:
        """`earlier_<m>`: the mean over the concepts erased before this step of each one's metric, scored as if
        it were the request (its own target prompts); the task is given this step's concept back after."""
        task, data = experiment.task, experiment.data()[0]
        values = []
        try:
            for earlier in self._requests[:k]:
                task.use_request(data, earlier)
                seed_stage(experiment.seed, "evaluate")
                values.append(task.evaluate(model, splits, experiment.runtime, int(experiment.cfg.eval.seed)))
        finally:
            task.use_request(data, self._requests[k])
        return {f"earlier_{n}": float(np.mean([v[n] for v in values])) for n in names}

    def _stream_metrics(self, experiment: Experiment, model, before, splits: Splits,
                        earlier: ForgetSet | None, request: ForgetSet, cum: ForgetSet) -> dict[str, float]:
        """Metrics on everything forgotten before this step (`earlier_*`, NaN at step 1) and, for class
        streams of a classifier, accuracy on the test examples of this request's classes (acc_f), of the classes never
        requested (acc_r) and of the classes forgotten earlier (acc_old), with Drop_f against `before` (the
        model that entered the step) and the H-Mean."""
        task = experiment.task
        names = [n for n in task.gap_metrics if n not in task.utility_metrics]
        if earlier is None:
            out = {f"earlier_{n}": float("nan") for n in names}
        elif self.kind == "concepts":
            out = self._earlier_concepts(experiment, model, splits, len(earlier.description["concepts"]), names)
        else:
            earlier_splits = self._splits(experiment.data()[0], request, cum, forget=earlier.indices)
            seed_stage(experiment.seed, "evaluate")
            values = task.evaluate(model, earlier_splits, experiment.runtime, int(experiment.cfg.eval.seed))
            out = {f"earlier_{n}": values[n] for n in names}
        if self.kind != "classes" or not hasattr(task, "predict_logits"):  # class accuracies: classifiers only
            return out
        data = experiment.data()[0]
        labels = data.test["y"].cpu().numpy()
        current = request.description["classes"]
        forgotten = cum.description["classes"]
        old = [c for c in forgotten if c not in current]
        remaining = [c for c in range(int(data.info["num_classes"])) if c not in forgotten]

        def predict(m) -> np.ndarray:
            return task.predict_logits(m, data.test, experiment.runtime).argmax(axis=1)

        preds = predict(model)
        acc_f = class_group_accuracy(preds, labels, current)
        acc_r = class_group_accuracy(preds, labels, remaining)
        drop_f = class_group_accuracy(predict(before), labels, current) - acc_f
        return out | {"acc_f": acc_f, "acc_r": acc_r,
                      "acc_old": class_group_accuracy(preds, labels, old) if old else float("nan"),
                      "drop_f": drop_f, "h_mean": h_mean(drop_f, acc_r)}


"""S3T (Chowdhury et al., ICLR 2025): exact unlearning with sequence-aware sharded, sliced LoRA training.

A frozen backbone carries LoRA layers (peft) on the query/value projections and FFN linears of every transformer
block. The blocks are split top-down into `slices` groups. Within each of `shards` shards, each of `budget`
slice orders trains one model: stage k trains the k-th group from the top (stage 1 also the head) on the
order's first k slices, earlier groups frozen, so the checkpoint after stage k depends on exactly those slices.
A deletion in slice j invalidates, in every order, the stages from j's position on: the shard keeps serving the
order with the longest intact prefix, i.e. the checkpoint of its last intact stage, whose later groups are still
at their zero initialisation — deactivated. Nothing is retrained until a shard has no intact model left; then
`retrain=on_empty` retrains that shard on what it retains and `never` drops it. Outputs (softmax) are averaged
over the live shards.

Without a public pretrained checkpoint for the bundled digits, the frozen backbone is pretrained on data
outside the training set D — the validation split, and the data config's `pretrain` set where it names one
(printed digits rendered from fonts for `data=digits`, unlearn/data/font_digits.py) — so no deletion can ever
reach it and the method stays exact. Every stage is cached under the hash of the retained indices it saw (as SISA's), so the original is
built once through `build_original` and serving a shorter prefix costs no training. `run_metrics` reports the
live shards, the mean served prefix, the shards retrained by this request and the deletion capacity so far
(requests served before the first retrain).
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from scipy.optimize import linear_sum_assignment
from torch import nn

from unlearn.cache import content_key
from unlearn.codehash import code_digest
from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError, DivergedError
from unlearn.knobs import COUNT, POSITIVE, OneOf, Range
from unlearn.methods.base import Method, OriginalTrainer, UnlearnContext
from unlearn.methods.gs_lora import check_lora_model
from unlearn.methods.sisa import shard_plan
from unlearn.runtime import derive_seed

ORDERS = ("cyclic", "matching")
RETRAIN = ("on_empty", "never")


def slice_orders(slices: int, budget: int, kind: str, seed: int,
                 prior: Sequence[float] | None = None) -> list[tuple[int, ...]]:
    """`budget` orders of the slices. cyclic: rotations. matching: each order a minimum-cost assignment of
    slices to positions (scipy's linear_sum_assignment). The cost of slice s at position p is the expected
    number of stages a deletion would invalidate there, slices·prior[s]·(slices − p) — so slices likely to be
    deleted go late, the paper's rule — plus how often the earlier orders already placed s at or before p,
    which spreads the early positions over the slices across orders; ties are broken by the seed. With no
    prior (all slices equally likely) the first term is the same for every assignment and only the spread
    counts."""
    if kind == "cyclic":
        return [tuple((j + b) % slices for j in range(slices)) for b in range(budget)]
    rng = np.random.default_rng(seed)
    p = np.full(slices, 1.0 / slices) if prior is None else np.asarray(prior, dtype=float) / np.sum(prior)
    risk = slices * p[:, None] * (slices - np.arange(slices))[None, :]
    early = np.zeros((slices, slices))  # early[s, p]: orders so far with slice s at position <= p
    orders = []
    for _ in range(budget):
        rows, cols = linear_sum_assignment(risk + early + 1e-3 * rng.random((slices, slices)))
        order = tuple(int(s) for s in rows[np.argsort(cols)])
        orders.append(order)
        for position, s in enumerate(order):
            early[s, position:] += 1
    return orders


class S3TEnsemble(nn.Module):
    """Live shard models averaged in probability; `forward` returns log of the mean softmax. Carries the
    bookkeeping the next request starts from (per shard: the deletions it was trained with, each order's intact
    prefix; and the requests served without a retrain)."""

    def __init__(self, models: list[nn.Module], state: dict[str, Any]):
        super().__init__()
        self.shards = nn.ModuleList(models)
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(m(x).float(), dim=-1) for m in self.shards]).mean(0)
        return probs.clamp_min(1e-12).log()


class S3T(Method):
    name = "s3t"
    supports = ("classification",)
    knobs = {"shards": COUNT, "slices": COUNT, "budget": COUNT, "orders": OneOf(ORDERS), "retrain": OneOf(RETRAIN),
             "rank": COUNT, "lora_alpha": POSITIVE, "lr": POSITIVE, "epochs": Range(1, integer=True), "batch_size": COUNT}

    def __init__(self, shards: int = 2, slices: int = 4, budget: int = 2, orders: str = "cyclic",
                 retrain: str = "on_empty", rank: int = 8, lora_alpha: float = 8.0, lr: float = 2e-3,
                 epochs: int = 15, batch_size: int = 32, backbone_data: Callable[[], TensorData] | None = None,
                 deletion_prior: Sequence[float] | None = None):
        if orders == "cyclic" and budget > slices:
            raise ConfigError(f"method.budget={budget} cyclic orders of {slices} slices: at most {slices} are distinct")
        self.shards, self.slices, self.budget, self.orders, self.retrain = int(shards), int(slices), int(budget), orders, retrain
        self.rank, self.lora_alpha, self.lr, self.epochs, self.batch_size = int(rank), float(lora_alpha), float(lr), int(epochs), int(batch_size)
        if deletion_prior is not None:
            deletion_prior = [float(v) for v in deletion_prior]
            if orders != "matching" or len(deletion_prior) != slices or min(deletion_prior) < 0 or sum(deletion_prior) <= 0:
                raise ConfigError(f"method.deletion_prior needs method.orders=matching and {slices} non-negative "
                                  f"weights (one per slice, not all zero); got {deletion_prior} with orders={orders}")
        self.deletion_prior = deletion_prior
        self._backbone_data = backbone_data  # data.pretrain: labelled data outside D, built only when pretraining
        self._trainers: dict[int, OriginalTrainer] = {}
        self._stages: dict[str, dict[str, torch.Tensor]] = {}  # stage key → trainable weights (LoRA + head)
        self._figures: dict[str, float] = {}

    # ---- pieces -------------------------------------------------------------------------------
    def _fields(self, trainer: OriginalTrainer) -> dict[str, Any]:
        return trainer.key_fields | {"s3t": {k: v for k, v in self.params().items()},
                                     "code": trainer.key_fields["code"] + code_digest(type(self))}

    def _orders(self, trainer: OriginalTrainer, shard: int) -> list[tuple[int, ...]]:
        return slice_orders(self.slices, self.budget, self.orders, derive_seed(trainer.model_seed, "s3t-orders", str(shard)),
                            self.deletion_prior)

    def _plan(self, trainer: OriginalTrainer) -> list[list[np.ndarray]]:
        return shard_plan(len(trainer.train), self.shards, self.slices, trainer.model_seed, self.name)

    def _backbone(self, trainer: OriginalTrainer) -> nn.Module:
        """cfg.model pretrained on data outside D — the validation split, plus the data config's `pretrain`
        set where it has one — cached; then frozen by peft."""
        if len(trainer.val) == 0:
            raise ConfigError("s3t pretrains its frozen backbone on the validation split, which is empty; "
                              "set data.source.val_fraction > 0")
        extra = code_digest(self._backbone_data) if self._backbone_data is not None else ""
        key = content_key("s3t-backbone", **(trainer.key_fields | {"code": trainer.key_fields["code"] + code_digest(type(self)) + extra}))

        def pretrain() -> dict[str, Any]:
            data = trainer.val
            if self._backbone_data is not None:
                outside = self._backbone_data()
                # Match the pretraining images to the (normalised) validation split, per channel.
                dims = (0, 2, 3)
                x = (outside["x"] - outside["x"].mean(dims, keepdim=True)) / outside["x"].std(dims, keepdim=True)
                x = x * trainer.val["x"].std(dims, keepdim=True) + trainer.val["x"].mean(dims, keepdim=True)
                data = TensorData(x=torch.cat([x.to(trainer.val["x"]), trainer.val["x"]]),
                                  y=torch.cat([outside["y"].to(trainer.val["y"]), trainer.val["y"]]))
            model = trainer.new_model("s3t-backbone")
            torch.manual_seed(derive_seed(trainer.model_seed, "s3t-backbone"))
            trainer.task.fit(model, data, trainer.recipe, trainer.runtime,
                             trainer.runtime.generator(trainer.model_seed, "s3t-backbone"),
                             desc=f"s3t backbone ({len(data)} examples outside D)")
            return {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}

        payload, _ = trainer.cache.get_or_compute(key, pretrain, "s3t backbone")
        model = trainer.new_model("s3t-backbone")
        model.load_state_dict(payload["state_dict"])
        return model

    def _lora_model(self, trainer: OriginalTrainer) -> tuple[nn.Module, list[list[str]]]:
        backbone = self._backbone(trainer)
        blocks = backbone.lora_groups("all")
        groups = [[n for block in chunk for n in block] for chunk in np.array_split(np.array(blocks, dtype=object), self.slices)]
        model = get_peft_model(backbone, LoraConfig(r=self.rank, lora_alpha=self.lora_alpha, lora_dropout=0.0,
                                                    target_modules=[n for g in groups for n in g]))
        return model, groups

    @staticmethod
    def _group_params(model: nn.Module, group: list[str]) -> list[nn.Parameter]:
        return [p for name, p in model.named_parameters() if "lora_" in name and any(f"{t}.lora_" in name for t in group)]

    @staticmethod
    def _head_params(model: nn.Module) -> list[nn.Parameter]:
        return list(model.get_base_model().classifier().parameters())

    @staticmethod
    def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
        head = {id(p) for p in model.get_base_model().classifier().parameters()}
        return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if "lora_" in n or id(p) in head}

    def _shard_models(self, trainer: OriginalTrainer, shard: int, slices: list[np.ndarray], deleted: np.ndarray):
        """Train (or load) every stage of every order of one shard on what it retains of `deleted`;
        returns per order the list of stage keys (stage k's checkpoint = prefix of length k+1)."""
        fields = self._fields(trainer)
        retained = [np.setdiff1d(sl, deleted) for sl in slices]
        keys, computed = [], 0
        template, groups = None, None
        for b, order in enumerate(self._orders(trainer, shard)):
            state, order_keys = None, []
            for k in range(self.slices):
                key = content_key("s3t-stage", **fields, shard=shard, order=list(order), stage=k,
                                  slices=[retained[j] for j in order[:k + 1]])
                if key not in self._stages:
                    if not (trainer.cache.enabled and trainer.cache.path(key).exists()):
                        computed += 1
                        if template is None:
                            template, groups = self._lora_model(trainer)
                    self._stages[key], _ = trainer.cache.get_or_compute(
                        key, lambda: self._train_stage(trainer, template, groups, state, k,
                                                       np.concatenate([retained[j] for j in order[:k + 1]]), shard, b),
                        f"s3t shard {shard + 1} order {b + 1} stage {k + 1}")
                state = self._stages[key]
                order_keys.append(key)
            keys.append(order_keys)
        return keys, computed

    def _train_stage(self, trainer, template, groups, state, stage, indices, shard, order) -> dict[str, Any]:
        model = copy.deepcopy(template)
        if state is not None:
            model.load_state_dict(state, strict=False)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in self._group_params(model, groups[stage]) + (self._head_params(model) if stage == 0 else []):
            p.requires_grad_(True)
        if len(indices):
            recipe = dataclasses.replace(trainer.recipe, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
                                         optimizer="adamw", weight_decay=0.0, warmup_epochs=0.0)
            torch.manual_seed(derive_seed(trainer.model_seed, "s3t", str(shard), str(order), str(stage)))
            trainer.task.fit(model, trainer.train.subset(indices), recipe, trainer.runtime,
                             trainer.runtime.generator(trainer.model_seed, "s3t", str(shard), str(order), str(stage)),
                             desc=f"s3t shard {shard + 1} order {order + 1} stage {stage + 1}")
        return self._trainable_state(model)

    def _serve(self, trainer: OriginalTrainer, state: dict[str, Any]) -> S3TEnsemble:
        template, _ = self._lora_model(trainer)
        models = []
        for shard in state["shards"]:
            prefix = max(shard["prefix"])
            if prefix == 0:
                continue
            best = int(np.argmax(shard["prefix"]))
            model = copy.deepcopy(template)
            model.load_state_dict(self._stages[shard["keys"][best][prefix - 1]], strict=False)
            model.eval()
            models.append(model)
        if not models:
            raise DivergedError("s3t: every shard has lost all its intact models and method.retrain=never")
        return S3TEnsemble(models, state)

    # ---- the Method interface -----------------------------------------------------------------
    def build_original(self, trainer: OriginalTrainer) -> tuple[nn.Module, str]:
        check_lora_model(self.name, trainer.new_model("probe"), "all", min_groups=self.slices)
        self._trainers[trainer.model_seed] = trainer
        deleted = np.zeros(0, dtype=np.int64)
        shards = []
        for s, slices in enumerate(self._plan(trainer)):
            keys, _ = self._shard_models(trainer, s, slices, deleted)
            shards.append({"trained_without": deleted, "prefix": [self.slices] * self.budget, "keys": keys})
        state = {"model_seed": trainer.model_seed, "deleted": deleted, "shards": shards, "served": 0, "capacity": None}
        return self._serve(trainer, state), content_key("s3t-original", **self._fields(trainer))

    def unlearn(self, ctx: UnlearnContext) -> nn.Module:
        original = ctx.original
        if not isinstance(original, S3TEnsemble) or original.state["model_seed"] not in self._trainers:
            raise ConfigError("s3t unlearns the sharded LoRA ensemble it built as the original (Method.build_original)")
        trainer = self._trainers[original.state["model_seed"]]
        state = copy.deepcopy(original.state)
        deleted = np.union1d(state["deleted"], np.asarray(ctx.forget_indices, dtype=np.int64))
        retrained = computed = 0
        for s, (slices, shard) in enumerate(zip(self._plan(trainer), state["shards"])):
            orders = self._orders(trainer, s)
            dirty = [j for j, sl in enumerate(slices)
                     if len(np.intersect1d(np.setdiff1d(deleted, shard["trained_without"]), sl))]
            for b, order in enumerate(orders):  # deactivate every group trained on a dirty slice
                for j in dirty:
                    shard["prefix"][b] = min(shard["prefix"][b], order.index(j))
            if max(shard["prefix"]) == 0 and self.retrain == "on_empty":
                shard["keys"], n = self._shard_models(trainer, s, slices, deleted)
                shard["trained_without"], shard["prefix"] = deleted, [self.slices] * self.budget
                retrained, computed = retrained + 1, computed + n
        state["deleted"] = deleted
        if retrained and state["capacity"] is None:
            state["capacity"] = state["served"]
        state["served"] += 1
        ensemble = self._serve(trainer, state)
        self._figures = {"live_shards": float(len(ensemble.shards)), "shards_retrained": float(retrained),
                         "stages_retrained": float(computed),
                         "mean_prefix": float(np.mean([max(sh["prefix"]) for sh in state["shards"]])),
                         "capacity": float(state["served"] if state["capacity"] is None else state["capacity"]),
                         "capacity_reached": float(state["capacity"] is not None)}
        return ensemble

    def run_metrics(self) -> dict[str, float]:
        return dict(self._figures)


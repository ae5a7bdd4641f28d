"""Text-to-image diffusion with concept erasure: ε-prediction loss under prompts, concept-replacing relabel,
and UnlearnCanvas-style metrics on generations scored by a judge with one head per axis of the world.

The request is a concept (`forget=concept`, `unlearn.data.concept`); the forget set is every training item
whose prompt names it. The task generates `samples_per_prompt` images for each of these prompt groups (one
prompt per combination of the world, the training templates taken in turn):
- target: combinations with the concept, canonical words → UA (% not judged the concept) and the in-prompt
  retain (the other axes of those generations still right);
- synonym / held-out: the same combinations written with the concept's synonym / in the held-out template →
  UA_synonym (only for a concept with a synonym), UA_held_out;
- other: every combination without the concept → IRA (its axis still right: orange, yellow, ... when red is
  erased), CRA (the other axes right), neighbour_retain (IRA restricted to the near neighbour, if it has one), and fd
  (Fréchet distance of their judge features to real test images without the concept).
`gen_acc_<axis>` is the judge's accuracy on each axis over the target and other generations: for the original
it says how well model and judge agree on what was asked (the judge itself is trained on ground truth).
forget_mse / retain_mse: the denoising loss on the forget / retain items at fixed noise and timesteps.
"""
from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.cache import content_key
from unlearn.codehash import code_digest
from unlearn.data.concept import ConceptForget, ConceptRequest, prompt_words, replace_word
from unlearn.data.forget import ForgetSet
from unlearn.data.shapes_t2i import NOISE_TARGET
from unlearn.data.tensordata import Batch, DataBundle, TensorData
from unlearn.errors import ConfigError
from unlearn.eval.diffusion import frechet_distance
from unlearn.eval.t2i import cross_axis_accuracy, retain_accuracy, unlearning_accuracy
from unlearn.knobs import COUNT, NON_NEGATIVE_INT, Range
from unlearn.models.t2i import AxisJudge
from unlearn.runtime import Runtime, derive_seed
from unlearn.tasks.base import Splits, Task, mean_denoising_mse
from unlearn.tasks.classification import random_crop_flip
from unlearn.training import OptimConfig, Streams, optimise

if TYPE_CHECKING:
    from unlearn.cache import Cache
    from unlearn.models.t2i import TextConditionedDiffusion

log = logging.getLogger(__name__)

JUDGE_RECIPE = {"epochs": 12, "lr": 0.05, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9,
                "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 0.5}
GROUPS = ("target", "synonym", "held_out", "other")


class TextToImageTask(Task):
    """Avg. Gap averages the gaps of UA, IRA and CRA (UnlearnCanvas's three): one for forgetting, two for what
    must survive. The other metrics are reported beside them."""

    kind = "t2i"
    gap_metrics = ("UA", "IRA", "CRA")
    utility_metrics = ("IRA", "CRA")
    knobs = {"samples_per_prompt": COUNT, "sampling_steps": COUNT, "guidance_scale": Range(0),
             "eval_batch_size": Range(2, integer=True), "judge_width": COUNT, "judge_seed": NON_NEGATIVE_INT,
             "picture_samples": COUNT}

    def __init__(self, samples_per_prompt: int = 2, sampling_steps: int = 20, guidance_scale: float = 3.0,
                 eval_batch_size: int = 256, judge_width: int = 16, judge_seed: int = 0,
                 judge_train: Optional[Mapping[str, Any]] = None, picture_samples: int = 2):
        self.samples_per_prompt = int(samples_per_prompt)
        self.sampling_steps = int(sampling_steps)
        self.guidance_scale = float(guidance_scale)
        self.eval_batch_size = int(eval_batch_size)
        self.judge_width = int(judge_width)
        self.judge_seed = int(judge_seed)
        self.judge_recipe = OptimConfig(**{**JUDGE_RECIPE, **dict(judge_train or {})})
        self.picture_samples = int(picture_samples)
        self._builder: Optional[ConceptForget] = None
        self.request: Optional[ConceptRequest] = None
        self._judge: Optional[AxisJudge] = None
        self._token_ids: dict[str, torch.Tensor] = {}

    # ---- the request and the world ---------------------------------------------------------------
    def check_forget(self, builder) -> None:
        if not isinstance(builder, ConceptForget):
            raise ConfigError(f"the t2i task erases concepts named in prompts, but forget={builder.name} removes "
                              f"examples; use forget=concept forget.concept=<word> (e.g. red, circle)")
        self._builder = builder

    def use_request(self, data: DataBundle, forget: ForgetSet) -> None:
        """Score and erase the concept `forget` names (a concept stream's step, a validation request): the run's own
        request, with every knob it was given, if it names the run's concept; else that concept with the run's guide
        (its anchor and preserve set are the concept's defaults: they are defined relative to it)."""
        own = None if self._builder is None else self._builder.resolve(data)
        concept = forget.description["concept"]
        if own is not None and concept == own.concept:
            self.use_world(data, own)
            return
        guide = None if own is None or own.guide in ("", concept) else own.guide
        self.use_world(data, ConceptForget(concept=concept, guide=guide).resolve(data))

    def use_world(self, data: DataBundle, request: ConceptRequest) -> None:
        """Read the world's prompt table and index the prompts this request needs."""
        info = data.info
        self.request = request
        self.axes: dict[str, list[str]] = info["axes"]
        self.prompts: list[str] = list(info["prompts"])
        self.empty = len(self.prompts)  # the empty prompt's row in every token table
        lookup = {text: i for i, text in enumerate(self.prompts)}
        pseudo = torch.full((len(self.prompts),), NOISE_TARGET, dtype=torch.long)
        for i, text in enumerate(self.prompts):
            for word in request.words:
                if word in prompt_words(text):
                    pseudo[i] = lookup[replace_word(text, word, request.anchor)]
        self._pseudo = pseudo
        groups: dict[str, list[tuple[int, tuple[int, ...]]]] = {g: [] for g in GROUPS}
        templates = info["templates"]
        for i, combo in enumerate(itertools.product(*(range(len(v)) for v in self.axes.values()))):
            values = {axis: self.axes[axis][k] for axis, k in zip(self.axes, combo)}
            template = templates[i % len(templates)]
            if values[request.axis] == request.concept:
                groups["target"].append((lookup[template.format(**values)], combo))
                for word in request.words[1:]:
                    groups["synonym"].append((lookup[template.format(**{**values, request.axis: word})], combo))
                groups["held_out"].append((lookup[info["held_out_template"].format(**values)], combo))
            else:
                groups["other"].append((lookup[template.format(**values)], combo))
        self.groups = {g: (torch.tensor([p for p, _ in rows], dtype=torch.long),
                           np.array([c for _, c in rows], dtype=np.int64).reshape(len(rows), len(self.axes)))
                       for g, rows in groups.items()}
        # The concept's prompts, as ESD and UCE see it: every training template, every combination, canonical words.
        self.concept_prompt_ids = torch.tensor(
            [i for i, text in enumerate(self.prompts) if info["prompt_template"][i] < len(templates)
             and not info["prompt_synonym"][i] and request.concept in prompt_words(text)], dtype=torch.long)

    def token_ids(self, model: "TextConditionedDiffusion") -> torch.Tensor:
        """(P + 1, L) token ids of every prompt of the world and, last, the empty prompt (tokenized once per
        tokenizer)."""
        if model.tokenizer_id not in self._token_ids:
            self._token_ids[model.tokenizer_id] = model.tokenize([*self.prompts, ""])
        return self._token_ids[model.tokenizer_id].to(model.unet.device)

    def text_states(self, model: "TextConditionedDiffusion", prompts: torch.Tensor) -> torch.Tensor:
        """Text states (B, L, D) of prompt-table rows (`self.empty`: the empty prompt)."""
        return model.encode_text(self.token_ids(model)[prompts.to(model.unet.device)])

    # ---- training ------------------------------------------------------------------------------
    def loss(self, model: "TextConditionedDiffusion", batch: Batch) -> torch.Tensor:
        return self.denoising_loss(model, batch)

    def denoising_loss(self, model: "TextConditionedDiffusion", batch: Batch,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Per-example MSE of the model's prediction (ε, or v for a v-prediction model) for x_t at a random
        timestep under the item's prompt c.

        Relabelled items (`pseudo_prompt` >= 0, set by `relabel`) are trained toward the model's own
        prediction for the same x_t under the pseudo prompt, without gradient — SalUn's
        MSE(ε(x_t, c_f), stopgrad ε(x_t, c_pseudo)). In train mode the other items' prompts are dropped to the
        empty prompt with the model's `cond_dropout` rate (classifier-free guidance). Draws come from torch's
        global RNG unless `generator` is given, on the CPU, so a seed gives the same draws on every device."""
        x0 = model.to_latents(batch["x"])
        n, device = len(x0), x0.device
        t = torch.randint(0, model.num_train_timesteps, (n,), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        x_t = model.add_noise(x0, noise, t)
        prompt, pseudo = batch["prompt"], batch.get("pseudo_prompt")
        relabelled = pseudo != NOISE_TARGET if pseudo is not None else torch.zeros_like(prompt, dtype=torch.bool)
        if model.training and model.cond_dropout > 0:
            drop = (torch.rand(n, generator=generator) < model.cond_dropout).to(device) & ~relabelled
            prompt = torch.where(drop, self.empty, prompt)
        target = model.training_target(x0, noise, t)
        if bool(relabelled.any()):  # only the relabelled rows go through the model a second time
            target = target.clone()
            with torch.no_grad():
                target[relabelled] = model(x_t[relabelled], t[relabelled],
                                           self.text_states(model, pseudo[relabelled])).to(target.dtype)
        prediction = model(x_t, t, self.text_states(model, prompt))
        return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)

    def relabel(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The same images, with the prompt's concept word replaced by the request's anchor (pseudo concept)
        as the prompt of their target: "a red circle on black" → "a yellow circle on black"."""
        pseudo = self._pseudo.to(batch["prompt"].device)[batch["prompt"]]
        return {**batch, "pseudo_prompt": pseudo}

    # ---- the judge -----------------------------------------------------------------------------
    def setup(self, data: DataBundle, cache: "Cache", runtime: Runtime, seed: int) -> None:
        """Resolve the concept against the world and train (or load) the judge. Its seed is the task's own
        `judge_seed`, so runs of every seed are judged alike."""
        missing = ({"x", "prompt", "pseudo_prompt"} | set(data.info.get("axes", {}))) - set(data.train.keys())
        if "axes" not in data.info or missing:
            raise ConfigError(f"the t2i task needs a world with prompts and labelled axes (data=shapes_t2i); "
                              f"{data.name!r} lacks {sorted(missing) or 'axes'}")
        if self._builder is None:
            raise ConfigError("the t2i task needs a concept request: forget=concept forget.concept=<word>")
        self.use_world(data, self._builder.resolve(data))
        axes = {axis: len(values) for axis, values in self.axes.items()}
        key = content_key("t2i-judge", code=code_digest(self._train_judge), data=data.fingerprint(), width=self.judge_width, recipe=vars(self.judge_recipe),
                          seed=self.judge_seed, threads=runtime.key_threads)  # threads: they change a CPU model
        payload, _ = cache.get_or_compute(key, lambda: self._train_judge(data, axes, runtime), "judge (one head per axis)")
        log.info("judge: accuracy on real test images %s",
                 ", ".join(f"{axis} {acc:.1f}%" for axis, acc in payload["test_acc"].items()))
        judge = self._new_judge(data, axes)
        judge.load_state_dict(payload["state_dict"])
        self._judge = runtime.place(judge).eval()
        self.judge_test_acc = payload["test_acc"]

    def _new_judge(self, data: DataBundle, axes: dict[str, int]) -> AxisJudge:
        channels, size = int(data.train["x"].shape[1]), int(data.train["x"].shape[-1])
        return AxisJudge(axes, channels, self.judge_width, size)

    def _train_judge(self, data: DataBundle, axes: dict[str, int], runtime: Runtime) -> dict[str, Any]:
        with torch.random.fork_rng(devices=[]):  # the judge's initialisation leaves the run's RNG untouched
            torch.manual_seed(derive_seed(self.judge_seed, "t2i-judge-init"))
            judge = runtime.place(self._new_judge(data, axes))

        def objective(model: nn.Module, _forget: Optional[Batch], batch: Batch) -> torch.Tensor:
            logits = model(batch["x"])
            return sum(F.cross_entropy(logits[axis].float(), batch[axis]) for axis in axes)

        def flip(batch: Batch, generator: torch.Generator) -> Batch:  # the shapes are left-right symmetric
            return {**batch, "x": random_crop_flip(batch["x"], 0, True, generator)}

        optimise(judge, objective, Streams(retain=data.train, mode="retain"), self.judge_recipe, runtime,
                 runtime.generator(self.judge_seed, "t2i-judge"), augment=flip, desc="judge")
        judge.eval()
        judged, _ = self._judge_images(judge, data.test["x"], runtime)
        test_acc = {axis: float(100 * np.mean(judged[:, a] == data.test[axis].cpu().numpy()))
                    for a, axis in enumerate(axes)}
        return {"state_dict": {k: v.detach().cpu() for k, v in judge.state_dict().items()}, "test_acc": test_acc}

    @torch.inference_mode()
    def _judge_images(self, judge: AxisJudge, images: torch.Tensor, runtime: Runtime) -> tuple[np.ndarray, np.ndarray]:
        labels, features = [], []
        for start in range(0, len(images), self.eval_batch_size):
            chunk = images[start : start + self.eval_batch_size].to(runtime.device)
            with runtime.autocast():
                feats = judge.features(chunk)
                labels.append(torch.stack([head(feats).argmax(1) for head in judge.heads.values()], 1).cpu())
            features.append(feats.float().cpu())
        return torch.cat(labels).numpy(), torch.cat(features).numpy()

    def judge_outputs(self, images: torch.Tensor, runtime: Runtime) -> tuple[np.ndarray, np.ndarray]:
        """(judged value per axis (N, A), judge features (N, F)) of images in [-1, 1]."""
        if self._judge is None:
            raise RuntimeError("the t2i task judges generations with its judge: call task.setup(...) first")
        return self._judge_images(self._judge, images, runtime)

    # ---- generation and evaluation -------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, model: "TextConditionedDiffusion", prompts: torch.Tensor, runtime: Runtime, seed: int) -> torch.Tensor:
        """One image in [-1, 1] per prompt-table row in `prompts`: DDIM with classifier-free guidance from noise
        seeded by `seed` (the same seed, the same noise for every model)."""
        generator = torch.Generator().manual_seed(derive_seed(seed, "t2i-noise"))
        noise = torch.randn((len(prompts), *model.latent_shape), generator=generator)
        was_training = model.training
        model.eval()
        images = []
        with runtime.autocast():
            uncond = self.text_states(model, torch.tensor([self.empty]))
            chunk = max(self.eval_batch_size // 2, 1)
            for start in range(0, len(prompts), chunk):
                cond = self.text_states(model, prompts[start : start + chunk])
                x = model.denoise(noise[start : start + chunk].to(runtime.device), cond, uncond, self.sampling_steps,
                                  self.guidance_scale)
                images.append(model.to_images(x).float().clamp(-1, 1).cpu())
        model.train(was_training)
        return torch.cat(images)

    def denoising_mse(self, model: "TextConditionedDiffusion", data: TensorData, runtime: Runtime, seed: int) -> float:
        """Mean ε-MSE over `data` (eval mode, true prompts), with timesteps and noise fixed by `seed`."""
        return mean_denoising_mse(self, model, data, runtime, seed, "t2i-denoising-mse")

    def evaluate(self, model: nn.Module, splits: Splits, runtime: Runtime, seed: int) -> dict[str, float]:
        request = self.request
        repeat = self.samples_per_prompt
        prompts = torch.cat([self.groups[g][0].repeat_interleave(repeat) for g in GROUPS])
        labels = np.concatenate([np.repeat(self.groups[g][1], repeat, axis=0) for g in GROUPS])
        group = np.concatenate([np.full(len(self.groups[g][0]) * repeat, i) for i, g in enumerate(GROUPS)])
        judged, features = self.judge_outputs(self.sample(model, prompts, runtime, seed), runtime)
        a = list(self.axes).index(request.axis)
        others = [k for k in range(len(self.axes)) if k != a]
        rows = {g: group == i for i, g in enumerate(GROUPS)}
        other = rows["other"]
        neighbour = other & (labels[:, a] == (self.axes[request.axis].index(request.neighbour)
                                             if request.neighbour else -1))
        real = splits.test["x"][splits.test[request.axis].cpu() != request.value]
        _, real_features = self.judge_outputs(real, runtime)
        canonical = rows["target"] | other
        metrics = {
            "UA": unlearning_accuracy(judged[rows["target"], a], request.value),
            "UA_held_out": unlearning_accuracy(judged[rows["held_out"], a], request.value),
            "IRA": retain_accuracy(judged[other, a], labels[other, a]),
            "CRA": cross_axis_accuracy(judged[other][:, others], labels[other][:, others]),
            "in_prompt_retain": cross_axis_accuracy(judged[rows["target"]][:, others], labels[rows["target"]][:, others]),
            "fd": frechet_distance(features[other], real_features),
            "forget_mse": self.denoising_mse(model, splits.forget, runtime, seed),
            "retain_mse": self.denoising_mse(model, splits.retain, runtime, seed),
        }
        # Only where the concept has a synonym / a near neighbour (a missing metric is absent, not NaN: NaN
        # marks a diverged model).
        if rows["synonym"].any():
            metrics["UA_synonym"] = unlearning_accuracy(judged[rows["synonym"], a], request.value)
        if neighbour.any():
            metrics["neighbour_retain"] = retain_accuracy(judged[neighbour, a], labels[neighbour, a])
        for k, axis in enumerate(self.axes):
            metrics[f"gen_acc_{axis}"] = retain_accuracy(judged[canonical, k], labels[canonical, k])
        return metrics

    def target_success(self, model: nn.Module, runtime: Runtime, seed: int) -> np.ndarray:
        """(N,) bool, one per generation of the target prompts (`samples_per_prompt` each, noise from `seed`):
        whether the judge assigns it the erased concept. Attack success rates (ASR) count these."""
        prompts = self.groups["target"][0].repeat_interleave(self.samples_per_prompt)
        judged, _ = self.judge_outputs(self.sample(model, prompts, runtime, seed), runtime)
        return judged[:, list(self.axes).index(self.request.axis)] == self.request.value

    def picture_prompts(self) -> list[tuple[str, int]]:
        """The prompts generations.png shows, each once, as (group, prompt-table row): up to three target prompts,
        a synonym and a held-out version of a target, the near neighbour (if the concept has one), and up to three
        other prompts spread over the rest."""
        other_prompts, other_labels = self.groups["other"]
        picks = [("target", self.groups["target"][0][:3]), ("synonym", self.groups["synonym"][0][:1]),
                 ("held out", self.groups["held_out"][0][:1])]
        if self.request.neighbour is not None:
            a = list(self.axes).index(self.request.axis)
            near = self.axes[self.request.axis].index(self.request.neighbour)
            picks.append(("neighbour", other_prompts[other_labels[:, a] == near][:1]))
        chosen = {int(p): group for group, prompts in picks for p in prompts}
        rest = [int(p) for p in other_prompts if int(p) not in chosen]  # the neighbour is an "other" prompt too
        chosen |= {p: "other" for p in rest[:: max(len(rest) // 3, 1)][:3]}
        return [(group, p) for p, group in chosen.items()]

    def save_pictures(self, run_dir: Path, models: dict[str, nn.Module], runtime: Runtime, seed: int) -> None:
        """generations.png: one row per model (`models`: label → model; an attacked model, e.g. a prompt attack's
        `AttackedPrompts`, generates the target prompts from the attack's adversarial text), the same prompts
        (`picture_prompts`) and noise for each, `picture_samples` each."""
        chosen = self.picture_prompts()
        prompts = torch.tensor([p for _, p in chosen], dtype=torch.long).repeat_interleave(self.picture_samples)
        draw_generations({label: self.sample(model, prompts, runtime, seed) for label, model in models.items()},
                         [f"{self.prompts[p]} [{group}]" for group, p in chosen], self.picture_samples,
                         f"erasing {self.request.concept!r}: {self.picture_samples} generations per prompt, same noise "
                         f"for every model", run_dir / "generations.png")


def draw_generations(rows: Mapping[str, torch.Tensor], captions: list[str], samples: int, title: str,
                     path: Path) -> None:
    """A PNG of generations (written atomically to `path`): one row per entry of `rows` (label → (P·samples, C,
    H, W) images in [-1, 1], `samples` consecutive images per prompt), one caption per prompt under the columns.
    Raises ValueError when a row's image count is not len(captions)·samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(captions) * samples
    wrong = {label: len(images) for label, images in rows.items() if len(images) != count}
    if wrong:
        raise ValueError(f"{len(captions)} prompts × {samples} samples need {count} images per row, got {wrong}")
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.55 * count + 1, 0.9 * len(rows) + 1.6), squeeze=False)
    for ax, (label, images) in zip(axes[:, 0], rows.items()):
        n, c, h, w = images.shape
        ax.imshow(images.add(1).div(2).clamp(0, 1).permute(2, 0, 3, 1).reshape(h, n * w, c).numpy(), vmin=0, vmax=1)
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center")
        ax.set_xticks([])
    w = next(iter(rows.values())).shape[-1]
    axes[-1, 0].set_xticks([(k + 0.5) * samples * w for k in range(len(captions))], captions, rotation=35, ha="right",
                           fontsize=7)
    axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)

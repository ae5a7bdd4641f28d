"""Class-conditional diffusion (SalUn's DDPM setting): ε-prediction loss, pseudo-class relabelling, and
metrics on generations judged by a classifier trained on the real images.

Forgetting a class means its generations stop looking like it: UA is the percent of forget-class
generations the judge does *not* recognise as that class, retain_acc the percent of the other classes'
generations it does recognise, and fd the Fréchet distance between the judge's features of generated and
real remaining-class images. forget_mse / retain_mse are the denoising loss on the forget / retain sets at
fixed noise and timesteps.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np
import torch
from torch import nn

from unlearn.cache import content_key
from unlearn.codehash import code_digest
from unlearn.data.digits_gen import NOISE_TARGET
from unlearn.data.tensordata import Batch, DataBundle, TensorData
from unlearn.errors import ConfigError
from unlearn.eval.diffusion import class_hit_rate, frechet_distance
from unlearn.models.cnn import SmallCNN
from unlearn.runtime import Runtime, derive_seed
from unlearn.tasks.base import Splits, Task, mean_denoising_mse
from unlearn.tasks.classification import ClassificationTask
from unlearn.training import OptimConfig
from unlearn.knobs import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, Range

if TYPE_CHECKING:
    from unlearn.cache import Cache
    from unlearn.models.ddpm import ClassConditionalDDPM

log = logging.getLogger(__name__)

PICTURE_SAMPLES = 4  # generations per class in the run's generations.png
JUDGE_RECIPE = {"epochs": 15, "lr": 0.05, "batch_size": 64, "optimizer": "sgd", "momentum": 0.9,
                "weight_decay": 5e-4, "schedule": "cosine", "warmup_epochs": 1}


def pseudo_class_targets(model: "ClassConditionalDDPM", x_t: torch.Tensor, t: torch.Tensor, pseudo: torch.Tensor,
                         noise: torch.Tensor) -> torch.Tensor:
    """`noise`, except that relabelled rows (pseudo class >= 0) get the model's own prediction for their x_t
    under the pseudo class, without gradient. Only those rows go through the model; under torch.func.vmap
    (per-example gradients), where values cannot choose rows, every row does and torch.where picks."""
    relabelled = pseudo != NOISE_TARGET
    try:
        any_relabelled = bool(relabelled.any())
    except RuntimeError:  # vmap refuses data-dependent control flow
        with torch.no_grad():
            frozen = model(x_t, t, pseudo.clamp_min(0)).to(noise.dtype)
        return torch.where(relabelled[:, None, None, None], frozen, noise)
    if not any_relabelled:
        return noise
    target = noise.clone()
    with torch.no_grad():
        target[relabelled] = model(x_t[relabelled], t[relabelled], pseudo[relabelled]).to(noise.dtype)
    return target


class DiffusionTask(Task):
    """Avg. Gap averages the gaps of UA and retain_acc: both are percentages of judged generations, one for
    forgetting and one for utility. fd stays out because its scale is that of the judge's feature space, and
    the two MSEs because they score denoising, not what the model generates."""

    kind = "diffusion"
    gap_metrics = ("UA", "retain_acc")
    utility_metrics = ("retain_acc",)

    knobs = {"num_classes": Range(2, integer=True), "samples_per_class": Range(2, integer=True), "sampling_steps": COUNT,
             "eval_batch_size": Range(2, integer=True), "guidance_scale": NON_NEGATIVE, "judge_seed": NON_NEGATIVE_INT,
             "judge_width": COUNT}

    def __init__(self, num_classes: int, samples_per_class: int = 30, sampling_steps: int = 20,
                 guidance_scale: float = 2.0, eval_batch_size: int = 512, judge_width: int = 16, judge_seed: int = 0,
                 judge_train: Optional[Mapping[str, Any]] = None):
        if samples_per_class < 2 or sampling_steps < 1 or eval_batch_size < 2:
            raise ConfigError(f"need data.task.samples_per_class >= 2, sampling_steps >= 1 and eval_batch_size >= 2; "
                              f"got {samples_per_class}, {sampling_steps} and {eval_batch_size}")
        if guidance_scale < 0:
            raise ConfigError(f"data.task.guidance_scale must be >= 0 (1: no guidance), got {guidance_scale}")
        self.num_classes = int(num_classes)
        self.samples_per_class = int(samples_per_class)
        self.sampling_steps = int(sampling_steps)
        self.guidance_scale = float(guidance_scale)
        self.eval_batch_size = int(eval_batch_size)
        self.judge_width = int(judge_width)
        self.judge_seed = int(judge_seed)
        self.judge_recipe = OptimConfig(**{**JUDGE_RECIPE, **dict(judge_train or {})})
        self._judge: Optional[SmallCNN] = None

    # ---- training ------------------------------------------------------------------------------
    def loss(self, model: "ClassConditionalDDPM", batch: Batch) -> torch.Tensor:
        return self.denoising_loss(model, batch)

    def denoising_loss(self, model: "ClassConditionalDDPM", batch: Batch,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Per-example MSE of ε(x_t, t, y) at a random timestep.

        The target is the true noise, except for examples whose `pseudo_y` names a class (set by `relabel`):
        their target is the model's own prediction for the same x_t under that class, without gradient —
        SalUn's ℓ_f = MSE(ε(x_t, c_f), stopgrad ε(x_t, c_pseudo)). In train mode the true-noise examples have
        their class dropped to the null class with the model's `cond_dropout` rate (classifier-free guidance).
        Timesteps, noise and dropout are drawn on the CPU, from torch's global RNG unless `generator` is
        given, so a seed gives the same draws on every device.
        """
        x0, y = batch["x"], batch["y"]
        n, device = len(x0), x0.device
        t = torch.randint(0, model.num_train_timesteps, (n,), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        x_t = model.add_noise(x0, noise, t)
        pseudo = batch.get("pseudo_y")
        if model.training and model.cond_dropout > 0:
            drop = (torch.rand(n, generator=generator) < model.cond_dropout).to(device)
            if pseudo is not None:
                drop = drop & (pseudo == NOISE_TARGET)
            y = torch.where(drop, model.null_class, y)
        target = noise if pseudo is None else pseudo_class_targets(model, x_t, t, pseudo, noise)
        return (model(x_t, t, y).float() - target.float()).pow(2).flatten(1).mean(1)

    def relabel(self, batch: Batch, generator: torch.Generator) -> Batch:
        """The same images, with a uniformly random *other* real class as the pseudo class of their target."""
        y = batch["y"]
        offset = torch.randint(1, self.num_classes, y.shape, generator=generator).to(y.device)
        return {**batch, "pseudo_y": (y + offset) % self.num_classes}

    def check_forget(self, builder) -> None:
        if builder.removes_classes is False:
            raise ConfigError(f"the diffusion metrics compare forgotten classes with the remaining ones, but "
                              f"forget={builder.name} removes examples, not classes; use forget=class "
                              f"forget.classes=[k] or forget=worst_case_class")

    # ---- the judge -----------------------------------------------------------------------------
    def setup(self, data: DataBundle, cache: "Cache", runtime: Runtime, seed: int) -> None:
        """Train (or load) the judge classifier. Its seed is the task's own `judge_seed`, not the run's, so that
        runs of every seed are scored by the same judge."""
        missing = {"x", "y", "pseudo_y"} - set(data.train.keys())
        if missing:
            raise ConfigError(f"the diffusion task needs data with x, y and pseudo_y tensors; {data.name!r} lacks "
                              f"{sorted(missing)} (use data=digits_gen or a source built like it)")
        if int(data.info.get("num_classes", -1)) != self.num_classes:
            raise ConfigError(f"data.task.num_classes={self.num_classes} but {data.name!r} has "
                              f"{data.info.get('num_classes')} classes")
        key = content_key("judge", code=code_digest(self._train_judge), data=data.fingerprint(), width=self.judge_width, recipe=vars(self.judge_recipe),
                          seed=self.judge_seed, threads=runtime.key_threads)  # threads: they change a CPU model
        payload, _ = cache.get_or_compute(key, lambda: self._train_judge(data, runtime), "judge classifier")
        log.info("judge classifier: %.1f%% accuracy on the real test images", payload["test_acc"])
        judge = SmallCNN(self.num_classes, int(data.train["x"].shape[1]), self.judge_width)
        judge.load_state_dict(payload["state_dict"])
        self._judge = runtime.place(judge).eval()

    def _train_judge(self, data: DataBundle, runtime: Runtime) -> dict[str, Any]:
        classifier = ClassificationTask(self.num_classes, crop_padding=1)
        with torch.random.fork_rng(devices=[]):  # the judge's initialisation leaves the run's RNG untouched
            torch.manual_seed(derive_seed(self.judge_seed, "judge-init"))
            judge = runtime.place(SmallCNN(self.num_classes, int(data.train["x"].shape[1]), self.judge_width))
        classifier.fit(judge, data.train, self.judge_recipe, runtime, runtime.generator(self.judge_seed, "judge"),
                       desc="judge")
        logits = classifier.predict_logits(judge, data.test, runtime)
        test_acc = float(100.0 * np.mean(logits.argmax(1) == data.test["y"].cpu().numpy()))
        return {"state_dict": {k: v.detach().cpu() for k, v in judge.state_dict().items()}, "test_acc": test_acc}

    @torch.inference_mode()
    def judge_outputs(self, images: torch.Tensor, runtime: Runtime) -> tuple[np.ndarray, np.ndarray]:
        """(judged class, penultimate features) of each image."""
        if self._judge is None:
            raise RuntimeError("the diffusion task judges generations with a classifier: call task.setup(...) first")
        labels, features = [], []
        for start in range(0, len(images), self.eval_batch_size):
            chunk = images[start : start + self.eval_batch_size].to(runtime.device)
            with runtime.autocast():
                feats = self._judge.features(chunk)
                logits = self._judge.classifier(feats)
            labels.append(logits.argmax(1).cpu())
            features.append(feats.float().cpu())
        return torch.cat(labels).numpy(), torch.cat(features).numpy()

    # ---- generation and evaluation -------------------------------------------------------------
    @torch.inference_mode()
    def sample(self, model: "ClassConditionalDDPM", classes: torch.Tensor, runtime: Runtime, seed: int) -> torch.Tensor:
        """One image per entry of `classes`: DDIM (η = 0) from seeded noise, with classifier-free guidance
        ε = ε(∅) + w·(ε(c) − ε(∅)) (w = 1: plain conditional). The same seed gives the same images."""
        generator = torch.Generator().manual_seed(derive_seed(seed, "diffusion-noise"))
        noise = torch.randn((len(classes), *model.sample_shape), generator=generator)
        guided = self.guidance_scale != 1.0
        chunk = self.eval_batch_size // 2 if guided else self.eval_batch_size
        was_training = model.training
        model.eval()
        images = []
        for start in range(0, len(classes), chunk):
            x = noise[start : start + chunk].to(runtime.device)
            y = classes[start : start + chunk].to(runtime.device)
            if guided:
                y = torch.cat([y, torch.full_like(y, model.null_class)])
            sampler = model.sampler(self.sampling_steps)
            for t in sampler.timesteps:
                with runtime.autocast():
                    eps = model(torch.cat([x, x]) if guided else x, t.to(runtime.device), y).float()
                if guided:
                    conditional, unconditional = eps.chunk(2)
                    eps = unconditional + self.guidance_scale * (conditional - unconditional)
                x = sampler.step(eps, t, x).prev_sample
            images.append(x.float().cpu())
        model.train(was_training)
        return torch.cat(images)

    def denoising_mse(self, model: "ClassConditionalDDPM", data: TensorData, runtime: Runtime, seed: int) -> float:
        """Mean ε-MSE over `data` (eval mode, true class), with timesteps and noise fixed by `seed`."""
        return mean_denoising_mse(self, model, data, runtime, seed, "denoising-mse")

    def save_pictures(self, run_dir: Path, models: dict[str, nn.Module], runtime: Runtime, seed: int) -> None:
        """generations.png: one row of images per model, `PICTURE_SAMPLES` per class side by side, the same noise
        for every model, so a forgotten class reads as the column block that stopped looking like its digit."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        classes = torch.arange(self.num_classes).repeat_interleave(PICTURE_SAMPLES)
        fig, axes = plt.subplots(len(models), 1, figsize=(0.3 * len(classes), 0.75 * len(models) + 0.5),
                                 squeeze=False)
        for ax, (label, model) in zip(axes[:, 0], models.items()):
            images = self.sample(model, classes, runtime, seed)                         # (n, c, h, w) in [-1, 1]
            n, c, h, w = images.shape
            strip = images.clamp(-1, 1).add(1).div(2).permute(2, 0, 3, 1).reshape(h, n * w, c)
            ax.imshow(strip.squeeze(-1).numpy(), cmap="gray" if c == 1 else None, vmin=0, vmax=1)
            ax.set_xticks([(k + 0.5) * PICTURE_SAMPLES * w for k in range(self.num_classes)],
                          [str(k) for k in range(self.num_classes)])
            ax.set_yticks([])
            ax.set_ylabel(label, rotation=0, ha="right", va="center")
        axes[0, 0].set_title(f"{PICTURE_SAMPLES} generations per class (x axis), same noise for every model")
        fig.tight_layout()
        tmp = run_dir / ".generations.png.tmp"
        fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
        tmp.replace(run_dir / "generations.png")

    def class_roles(self, splits: Splits) -> tuple[np.ndarray, np.ndarray]:
        """(forgotten classes, remaining classes): a class is forgotten when the forget set holds it and the
        retain set no longer does."""
        in_forget = np.unique(splits.forget["y"].cpu().numpy())
        remaining = np.unique(splits.retain["y"].cpu().numpy())
        forgotten = np.setdiff1d(in_forget, remaining)
        if len(forgotten) == 0:
            raise ConfigError("the diffusion metrics compare forgotten classes with the remaining ones, but no class "
                              "left the retain set; use class-wise forgetting (forget=class forget.classes=[k])")
        return forgotten, remaining

    def evaluate(self, model: nn.Module, splits: Splits, runtime: Runtime, seed: int) -> dict[str, float]:
        forgotten, remaining = self.class_roles(splits)
        conditioned = torch.arange(self.num_classes).repeat_interleave(self.samples_per_class)
        judged, generated_features = self.judge_outputs(self.sample(model, conditioned, runtime, seed), runtime)
        _, real_features = self.judge_outputs(splits.retain["x"], runtime)
        conditioned = conditioned.numpy()
        return {
            "UA": 100.0 - class_hit_rate(judged, conditioned, forgotten),
            "retain_acc": class_hit_rate(judged, conditioned, remaining),
            "fd": frechet_distance(generated_features[np.isin(conditioned, remaining)], real_features),
            "forget_mse": self.denoising_mse(model, splits.forget, runtime, seed),
            "retain_mse": self.denoising_mse(model, splits.retain, runtime, seed),
        }

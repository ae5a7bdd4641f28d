"""Causal language models: a tiny Llama built from a config (trains on CPU), or any pretrained HF causal LM."""
from __future__ import annotations

from torch import nn

from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, OneOf
from unlearn.models.lora import LoraSettings


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
                         dtype: str | None = None) -> nn.Module:
    """`AutoModelForCausalLM.from_pretrained(name)`: a hub name (needs network the first time) or a local folder.
    `local_files_only` never touches the network, so an offline machine fails at once instead of retrying.
    `dtype` stores the weights in that type (bfloat16 halves a large model's weights, gradients and optimiser
    state; None: as saved). `lora` and `gradient_checkpointing` as in `tiny_llama`."""
    import torch
    from transformers import AutoModelForCausalLM

    if not name:
        raise ConfigError("model.name is empty; give a hub name (e.g. model.name=gpt2) or a local folder")
    try:
        model = AutoModelForCausalLM.from_pretrained(name, revision=revision, local_files_only=local_files_only,
                                                     dtype=getattr(torch, dtype) if dtype else None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load the causal LM {name!r} ({type(exc).__name__}: {exc}); give a local folder "
                          f"saved with save_pretrained, or a hub name on a machine with network access "
                          f"(the hub's weights are cached after the first download)") from exc
    return _checkpointed(model, gradient_checkpointing)


tiny_llama.knobs = {"vocab_size": COUNT, "hidden_size": COUNT, "num_layers": COUNT, "num_heads": COUNT,
                    "intermediate_size": COUNT, "max_positions": COUNT}


def causal_lm_from_checkpoint(path: str, model_config: dict | None = None) -> nn.Module:
    """A published causal LM (original.path / oracle.path): `from_pretrained` of its folder, with the model
    config's weight dtype and gradient checkpointing."""
    config = model_config or {}
    return pretrained_causal_lm(path, local_files_only=True, dtype=config.get("dtype"),
                                gradient_checkpointing=bool(config.get("gradient_checkpointing", False)))


def _pretrained_config(model_config: dict):
    """The HF config of `model.name` (ConfigError if it cannot be read): no weights are loaded."""
    from transformers import AutoConfig

    name = model_config.get("name")
    if not name:
        raise ConfigError("model.name is empty; give a hub name (e.g. model.name=gpt2) or a local folder")
    try:
        return AutoConfig.from_pretrained(name, revision=model_config.get("revision"),
                                          local_files_only=bool(model_config.get("local_files_only")))
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


# Checked before anything trains: the model's source exists; the probe names its modules (Experiment.probe_model).
pretrained_causal_lm.check_source = _pretrained_config
pretrained_causal_lm.probe = _pretrained_probe
# Published originals and oracles of any causal-LM config load through from_pretrained (unlearn/models/checkpoints.py).
tiny_llama.from_checkpoint = causal_lm_from_checkpoint
pretrained_causal_lm.from_checkpoint = causal_lm_from_checkpoint
pretrained_causal_lm.knobs = {"dtype": OneOf(DTYPES, optional=True)}

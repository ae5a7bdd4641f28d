"""Stable Diffusion through diffusers: a saved `StableDiffusionPipeline` (a directory or a hub id) behind the
`TextConditionedDiffusion` interface, so ESD, UCE and the shared methods run on it unchanged.

`model=sd_pretrained model.path=<dir or hub id>` loads it with `from_pretrained` (`local_files_only` for a
local directory or when HF_HUB_OFFLINE is set). The UNet denoises VAE latents: `to_latents` encodes the world's
images (the posterior mean, scaled by the VAE's scaling factor), `to_images` decodes. The VAE never trains.
An unlearned model saves only the tensors that differ from the pretrained pipeline (`changed.safetensors`,
plus `unlearned.json` naming the base), and `StableDiffusion.from_changed(dir)` loads it back.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file, save_file

from unlearn.errors import ConfigError
from unlearn.knobs import Range
from unlearn.models.t2i import TextConditionedDiffusion, has_cross_attention

COMPONENTS = ("unet", "text_encoder", "vae")
CHANGED = "changed.safetensors"
MANIFEST = "unlearned.json"


def load_pipeline(path: str, local_files_only: Optional[bool] = None) -> StableDiffusionPipeline:
    """The pipeline at `path` (ConfigError naming the path if it cannot be loaded)."""
    local_files_only = _local_only(path, local_files_only)
    try:
        return StableDiffusionPipeline.from_pretrained(path, local_files_only=bool(local_files_only),
                                                       safety_checker=None, requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path={path!r} is not a loadable StableDiffusionPipeline "
                          f"(local_files_only={local_files_only}): {exc}") from None


def _local_only(path: str, local_files_only: Optional[bool]) -> bool:
    if local_files_only is None:
        return Path(path).is_dir() or os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    return bool(local_files_only)


class StableDiffusion(TextConditionedDiffusion):
    knobs = {"image_size": Range(8, integer=True), "cond_dropout": Range(0, 1, high_open=True)}

    @classmethod
    def check_source(cls, model_config: dict) -> None:
        """ConfigError before anything trains (a judge, the original) unless model.path holds a pipeline: its
        model_index.json is read (from disk, or the hub where allowed), not its weights."""
        path = model_config.get("path")
        if not path:
            raise ConfigError("model=sd_pretrained needs model.path=<a saved StableDiffusionPipeline dir or hub id>")
        local = _local_only(str(path), model_config.get("local_files_only"))
        try:
            StableDiffusionPipeline.load_config(str(path), local_files_only=local)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.path={path!r} is not a StableDiffusionPipeline folder or hub id "
                              f"(local_files_only={local}): {exc}") from None

    def __init__(self, path: Optional[str] = None, local_files_only: Optional[bool] = None, image_size: int = 512,
                 cond_dropout: float = 0.1):
        super().__init__()
        if not path:
            raise ConfigError("model=sd_pretrained needs model.path=<a saved StableDiffusionPipeline dir or hub id>")
        pipe = load_pipeline(str(path), local_files_only)
        self.path, self.local_files_only = str(path), local_files_only
        self.unet, self.text_encoder, self.vae, self.tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
        self.vae.requires_grad_(False)
        self.text_encoder.requires_grad_(False)  # fixed, as in SD's training: methods train the UNet unless they say
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.scaling = float(getattr(self.vae.config, "scaling_factor", 1.0))
        self.cond_dropout = float(cond_dropout)
        self.tokenizer_id = f"sd-{self.path}"
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if image_size % factor:
            raise ConfigError(f"data.image_size={image_size} must be a multiple of the VAE's downsampling {factor}")
        self._latent_size = image_size // factor

    @classmethod
    def configured_cross_attention(cls, model_config) -> Optional[bool]:
        """Read from a local pipeline's unet/config.json; None for a hub id (known only once loaded)."""
        unet_config = Path(str(model_config.get("path") or "")) / "unet" / "config.json"
        if not unet_config.is_file():
            return None
        blocks = json.loads(unet_config.read_text())
        return has_cross_attention([*blocks.get("down_block_types", ()), *blocks.get("up_block_types", ())])

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return int(self.unet.config.in_channels), self._latent_size, self._latent_size

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean * self.scaling

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.vae.dtype) / self.scaling).sample

    # ---- only the changed tensors ---------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the tensors that differ from the pretrained pipeline (safetensors) and a manifest naming it."""
        base = load_pipeline(self.path, self.local_files_only)
        changed = {}
        for component in COMPONENTS:
            reference = getattr(base, component).state_dict()
            for name, tensor in getattr(self, component).state_dict().items():
                tensor = tensor.detach().cpu()
                if not torch.equal(tensor, reference[name].to(tensor.dtype)):
                    changed[f"{component}.{name}"] = tensor.contiguous()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(changed, str(directory / CHANGED), metadata={"base": self.path})
        (directory / MANIFEST).write_text(json.dumps({"base": self.path, "changed_tensors": sorted(changed)}, indent=1))

    @classmethod
    def from_changed(cls, directory: str | os.PathLike, **kwargs) -> "StableDiffusion":
        """The pretrained pipeline named in `directory`'s manifest with the saved tensors put back."""
        directory = Path(directory)
        manifest = json.loads((directory / MANIFEST).read_text())
        model = cls(path=manifest["base"], **kwargs)
        changed = load_file(str(directory / CHANGED))
        missing = set(changed) - set(model.state_dict())
        if missing:
            raise ConfigError(f"{directory} holds tensors the base pipeline does not have: {sorted(missing)[:5]}")
        model.load_state_dict(changed, strict=False)
        return model

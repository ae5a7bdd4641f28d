"""Text-to-image diffusion models: what the t2i task and the concept-erasure methods see of them.

`TextConditionedDiffusion` is the interface: tokenize prompts, encode them into text states, predict the
noise ε(x_t, t, c) with a UNet whose cross-attention (`...attn2`) reads those states, move between images and
the space the UNet denoises (pixels here, VAE latents for Stable Diffusion), and a DDIM sampler. ESD, UCE and
the shared methods only use this interface, so the same code runs on `TinyTextToImage` (built from configs,
trained on the embedded world) and on a Stable Diffusion pipeline (`unlearn.models.sd`).

`TinyTextToImage`: a diffusers `UNet2DConditionModel` + a `CLIPTextModel` built from a config, with a word-level
`CLIPTokenizer` whose files the code writes itself (each word of the vocabulary is one token; no download). As
in Stable Diffusion the text encoder is fixed while the UNet trains (here at its seeded random initialisation;
`train_text_encoder=true` trains both jointly).

Both models keep the text encoder frozen (requires_grad False), as Stable Diffusion's training and the papers'
unlearning of it do: methods that edit the UNet leave it alone, and a method that trains it (AdvUnlearn's
default) unfreezes exactly what it trains.
"""
from __future__ import annotations

import inspect
import json
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from omegaconf import OmegaConf
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from unlearn.cache import digest_bytes
from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, FRACTION, NON_NEGATIVE_INT, OneOf, Range

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def word_level_tokenizer(words: Sequence[str], max_length: int) -> CLIPTokenizer:
    """A CLIPTokenizer that maps each of `words` to one token.

    A CLIP BPE vocabulary needs no training for a closed word list: for each word c1..cn it holds the
    characters and every suffix c_k..c_n</w>, and the merges (c_k, c_{k+1}..c_n</w>) rebuild the word from
    the right, one merge per character. The special tokens go last (CLIP's pooled output looks up EOS)."""
    if not words:
        raise ConfigError("model.vocabulary is empty: the word-level tokenizer needs the world's words")
    vocab: dict[str, int] = {}
    merges: list[str] = []
    for token in sorted({c for w in words for c in w}):
        vocab.setdefault(token, len(vocab))
        vocab.setdefault(token + "</w>", len(vocab))
    for word in sorted(set(words)):
        for k in range(len(word) - 1, -1, -1):
            vocab.setdefault(word[k:] + "</w>", len(vocab))
            merge = f"{word[k]} {word[k + 1:]}</w>"
            if k < len(word) - 1 and merge not in merges:
                merges.append(merge)
    vocab[BOS], vocab[EOS] = len(vocab), len(vocab) + 1
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab))
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=max_length)


def has_cross_attention(block_types: Sequence[str]) -> bool:
    """Whether diffusers UNet block types include a cross-attention block (`CrossAttn...`)."""
    return any("CrossAttn" in str(block) for block in block_types)


def require_cross_attention(model_config: Mapping[str, Any], method: str) -> None:
    """Refuse, from the model's config alone (before anything trains), a model whose UNet has no cross-attention
    (`...attn2`) for `method`, which edits or trains it. A config that cannot tell without building the model
    (e.g. a hub id not yet downloaded) passes; the method checks the built model again."""
    from unlearn.config import target_of  # unlearn.config builds models: imported here, not at module load

    cls = target_of(OmegaConf.create(dict(model_config)))
    if not (isinstance(cls, type) and issubclass(cls, TextConditionedDiffusion)):
        raise ConfigError(f"method={method} needs a text-to-image model with cross-attention (model=t2i_tiny or "
                          f"model=sd_pretrained); model._target_={model_config.get('_target_')!r} is not one")
    if cls.configured_cross_attention(model_config) is False:
        raise ConfigError(f"method={method} works on the UNet's cross-attention (attn2, through which the prompt "
                          f"acts), and this model has none: its down/up block types name no CrossAttn block")


class TextConditionedDiffusion(nn.Module):
    """The interface of a text-to-image ε-prediction model (see the module docstring).

    Subclasses set `unet`, `text_encoder`, `tokenizer`, `noise_scheduler`, `schedule` (the DDIM/DDPM
    scheduler config), `cond_dropout` and `image_shape`, and override `to_latents` / `to_images` when the
    UNet works in a latent space."""

    unet: UNet2DConditionModel
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    cond_dropout: float = 0.0
    clip_sample: bool = False         # clip DDIM's x0 estimate to [-1, 1] (pixel-space models)
    tokenizer_id: str = ""            # identifies the tokenizer: prompts tokenized once per id are reused

    @classmethod
    def configured_cross_attention(cls, model_config: Mapping[str, Any]) -> Optional[bool]:
        """Whether the UNet that `model_config` builds has cross-attention; None when the config alone cannot
        tell."""
        return None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.noise_scheduler.config.num_train_timesteps)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return int(self.unet.config.in_channels), int(size), int(size)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """(len(prompts), L) token ids, padded to the tokenizer's max length."""
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """Text states (B, L, D) that the UNet's cross-attention reads."""
        return self.text_encoder(ids.to(self.unet.device))[0]

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """ε predicted for noisy `x_t` at timesteps `t` given text `states`."""
        return self.unet(x_t, t, encoder_hidden_states=states.to(x_t.dtype)).sample

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.noise_scheduler.add_noise(x0, noise, t)

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet predicts for x_t = add_noise(x0, noise, t): the noise ε, v = √ᾱ ε − √(1−ᾱ) x0 (v-prediction)
        or x0 itself (sample). For a fixed x_t each is an affine function of ε, the same for every prompt, so
        mixes whose weights sum to 1 (CFG, ESD's target) mean the same in all three."""
        kind = self.noise_scheduler.config.prediction_type
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(x0, noise, t)
        return x0 if kind == "sample" else noise

    def sampler(self, steps: int) -> DDIMScheduler:
        """A deterministic DDIM sampler (η = 0) over `steps` of the training schedule; "trailing" spacing so a
        few steps still start at t ≈ T (the "leading" default never visits it)."""
        scheduler = DDIMScheduler.from_config(self.noise_scheduler.config, timestep_spacing="trailing",
                                              clip_sample=self.clip_sample, set_alpha_to_one=False)
        scheduler.set_timesteps(int(steps))
        return scheduler

    def denoise(self, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, steps: int, guidance: float,
                until: int | None = None) -> torch.Tensor:
        """DDIM (η = 0) from `noise` with classifier-free guidance ε = ε(∅) + w·(ε(c) − ε(∅)) (w = 1: plain
        conditional), for the first `until` of `steps` steps (None: all of them). `cond` (B, L, D) text states,
        `uncond` (1, L, D) those of the empty prompt. Returns the (partially) denoised latents."""
        sampler = self.sampler(steps)
        x, guided = noise, guidance != 1.0
        states = torch.cat([cond, uncond.expand(len(cond), -1, -1)]) if guided else cond
        for t in sampler.timesteps[:until]:
            eps = self(torch.cat([x, x]) if guided else x, t.to(x.device), states).float()
            if guided:
                conditional, unconditional = eps.chunk(2)
                eps = unconditional + guidance * (conditional - unconditional)
            x = sampler.step(eps, t, x).prev_sample
        return x

    def to_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → what the UNet denoises."""
        return images

    def to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """What the UNet denoises → images in [-1, 1]."""
        return latents

    def cross_attention_projections(self) -> dict[str, nn.Linear]:
        """Every cross-attention key/value projection (`...attn2.to_k`, `...attn2.to_v`) of the UNet, by name.
        UCE edits exactly these; ESD-x-strict trains exactly these."""
        return {name: module for name, module in self.unet.named_modules()
                if name.endswith(("attn2.to_k", "attn2.to_v")) and isinstance(module, nn.Linear)}


class TinyTextToImage(TextConditionedDiffusion):
    """A small UNet2DConditionModel with cross-attention + a CLIPTextModel built from a config, and a word-level
    tokenizer over `vocabulary`. The original and the oracle train the UNet under a fixed text encoder (its
    seeded initialisation), as Stable Diffusion trains under a fixed CLIP: on shapes_t2i a jointly trained
    encoder learned the prompt far slower (the prompted shape in 43% of generations after 1000 steps, against
    92% after 750 with the encoder fixed). `train_text_encoder=True` trains both. The default encoder has no
    transformer layer (`text_layers=0`: a word's state is its normalised token + position embedding), so a word
    means the same in every prompt, as in a pretrained CLIP; with one or two fixed random layers the states mix
    the whole prompt, and ESD's one-word prompt ("white") no longer reached the word inside full prompts."""

    clip_sample = True

    knobs = {"sample_size": Range(8, integer=True), "in_channels": COUNT, "layers_per_block": COUNT,
             "norm_num_groups": COUNT, "attention_head_dim": COUNT, "text_width": COUNT, "text_layers": NON_NEGATIVE_INT, "text_heads": COUNT, "max_length": Range(3, integer=True),
             "num_train_timesteps": Range(2, integer=True), "beta_schedule": OneOf(BETA_SCHEDULES),
             "prediction_type": OneOf(("epsilon", "v_prediction", "sample")),
             "cond_dropout": Range(0, 1, high_open=True), "text_dropout": FRACTION, "train_text_encoder": OneOf((True, False))}

    def __init__(self, vocabulary: Sequence[str], sample_size: int = 16, in_channels: int = 3,
                 block_out_channels: Sequence[int] = (32, 64), layers_per_block: int = 1, norm_num_groups: int = 8,
                 down_block_types: Sequence[str] = ("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types: Sequence[str] = ("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim: int = 4,
                 text_width: int = 64, text_layers: int = 2, text_heads: int = 4,
                 max_length: int = 12, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                 prediction_type: str = "sample", cond_dropout: float = 0.1, text_dropout: float = 0.0,
                 train_text_encoder: bool = False):
        super().__init__()
        channels = tuple(int(c) for c in block_out_channels)
        if not channels or any(c % norm_num_groups or c % attention_head_dim for c in channels):
            raise ConfigError(f"model.block_out_channels={list(channels)} must be non-empty multiples of "
                              f"model.norm_num_groups={norm_num_groups} and model.attention_head_dim={attention_head_dim}")
        if len(down_block_types) != len(channels) or len(up_block_types) != len(channels):
            raise ConfigError(f"model.down_block_types and model.up_block_types need one entry per block_out_channels "
                              f"entry ({len(channels)})")
        if not has_cross_attention((*down_block_types, *up_block_types)):
            raise ConfigError("a text-to-image model needs cross-attention: give model.down_block_types / "
                              "up_block_types at least one CrossAttn block")
        if text_width % text_heads:
            raise ConfigError(f"model.text_width={text_width} must be a multiple of model.text_heads={text_heads}")
        self.cond_dropout = float(cond_dropout)
        self.tokenizer = word_level_tokenizer(list(vocabulary), int(max_length))
        self.tokenizer_id = "words-" + digest_bytes(*sorted(set(vocabulary)), str(max_length))
        vocab = self.tokenizer.get_vocab()
        self.text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(vocab), hidden_size=int(text_width), intermediate_size=4 * int(text_width),
            num_hidden_layers=int(text_layers), num_attention_heads=int(text_heads),
            max_position_embeddings=int(max_length), projection_dim=int(text_width), dropout=float(text_dropout),
            bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS]))
        self.text_encoder.requires_grad_(bool(train_text_encoder))
        self.unet = UNet2DConditionModel(
            sample_size=int(sample_size), in_channels=int(in_channels), out_channels=int(in_channels),
            block_out_channels=channels, layers_per_block=int(layers_per_block), norm_num_groups=int(norm_num_groups),
            down_block_types=tuple(down_block_types), up_block_types=tuple(up_block_types),
            cross_attention_dim=int(text_width), attention_head_dim=int(attention_head_dim))
        self.noise_scheduler = DDPMScheduler(num_train_timesteps=int(num_train_timesteps), beta_schedule=beta_schedule,
                                             prediction_type=prediction_type)


    @classmethod
    def configured_cross_attention(cls, model_config: Mapping[str, Any]) -> Optional[bool]:
        defaults = inspect.signature(cls.__init__).parameters
        blocks = [model_config.get(k, defaults[k].default) for k in ("down_block_types", "up_block_types")]
        return has_cross_attention([b for types in blocks for b in types])


class AxisJudge(nn.Module):
    """The judge of generated images: a small CNN with one linear head per axis of the world; `features`
    (the penultimate layer) are what the Fréchet distance compares. The last feature map is flattened, not
    average-pooled: a shape is a spatial layout (a ring is a circle with a hole), which pooling would lose."""

    def __init__(self, axes: dict[str, int], in_channels: int = 3, width: int = 16, image_size: int = 16):
        super().__init__()
        from unlearn.models.cnn import conv_bn

        w = int(width)
        cells = (int(image_size) // 4) ** 2
        self.features = nn.Sequential(*conv_bn(in_channels, w), *conv_bn(w, 2 * w, stride=2),
                                      *conv_bn(2 * w, 2 * w, stride=2), nn.Flatten(),
                                      nn.Linear(2 * w * cells, 4 * w), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({axis: nn.Linear(4 * w, int(n)) for axis, n in axes.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.features(x)
        return {axis: head(features) for axis, head in self.heads.items()}

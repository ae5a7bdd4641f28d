"""The Stable Diffusion path (`model=sd_pretrained`) on a tiny pipeline the test builds from configs and saves:
it loads offline through from_pretrained, the methods run on it unchanged, and an unlearned model saves only
its changed tensors (safetensors) and loads back."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearn.errors import ConfigError
from unlearn.models.sd import CHANGED, StableDiffusion

from test_t2i import TINY_WORLD


def save_tiny_pipeline(directory: Path) -> Path:
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from unlearn.data.shapes_t2i import vocabulary
    from unlearn.models.t2i import BOS, EOS, word_level_tokenizer

    torch.manual_seed(0)
    tokenizer = word_level_tokenizer(vocabulary(), max_length=12)
    vocab = tokenizer.get_vocab()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        max_position_embeddings=12, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS], pad_token_id=vocab[EOS]))
    unet = UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32, attention_head_dim=4)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, layers_per_block=1)
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny-sd"))


# The pretrained pipeline is the original as it is (no fine-tuning): what the methods change is all there is.
SD = ["model=sd_pretrained", "data.train.epochs=0"]


@pytest.mark.parametrize("method, kind", [("uce", "kv"), ("esd", "attn2")])
def test_methods_run_on_a_saved_pipeline_and_save_only_changed_tensors(tiny_pipeline, run_experiment, method, kind):
    row = run_experiment(*TINY_WORLD, *SD, f"model.path={tiny_pipeline}", f"method={method}",
                         "method.sampling_steps=4" if method == "esd" else "method.lam=0.5",
                         "method.epochs=2" if method == "esd" else "method.erase_scale=1.0", tiny=False)
    assert row["status"] == "ok" and row["model"] == "StableDiffusion"
    saved = Path(row["run_dir"]) / "model"
    changed = load_file(str(saved / CHANGED))
    assert changed, "the method changed nothing"
    if kind == "kv":
        assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)
    else:
        assert all(n.startswith("unet.") and ".attn2." in n for n in changed)
    base = StableDiffusion(path=str(tiny_pipeline), image_size=8)
    reloaded = StableDiffusion.from_changed(saved, image_size=8)
    base_state, state = base.state_dict(), reloaded.state_dict()
    assert len(changed) < len(state) // 4  # only the edited tensors were written
    for name, tensor in state.items():
        if name in changed:
            assert torch.equal(tensor, changed[name]) and not torch.equal(tensor, base_state[name])
        else:
            assert torch.equal(tensor, base_state[name])


def test_sd_needs_a_loadable_path(tmp_path):
    with pytest.raises(ConfigError, match="model.path"):
        StableDiffusion(path=None)
    with pytest.raises(ConfigError, match="not a loadable StableDiffusionPipeline"):
        StableDiffusion(path=str(tmp_path / "missing"), local_files_only=True)


def test_sd_config_tells_whether_its_unet_has_cross_attention(tiny_pipeline, tmp_path):
    from unlearn.models.sd import StableDiffusion

    assert StableDiffusion.configured_cross_attention({"path": str(tiny_pipeline)}) is True
    assert StableDiffusion.configured_cross_attention({"path": "some/hub-id"}) is None  # known only once loaded
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"down_block_types": ["DownBlock2D"], "up_block_types": ["UpBlock2D"]}')
    assert StableDiffusion.configured_cross_attention({"path": str(tmp_path)}) is False

"""A tiny Vision Transformer built from a transformers `ViTConfig` (no pretrained weights needed), for small
images such as the bundled 8x8 digits, which it upsamples to `image_size` before patching.

It names its LoRA targets for the methods that adapt it (GS-LoRA, S3T): `lora_groups(part)` gives, per
transformer block from the top down, the names of the block's FFN linears (`part="ffn"`) or of its attention
query/value projections (`part="attention"`), or both (`part="all"`), as peft's `target_modules` expects them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from unlearn.knobs import COUNT

LORA_PARTS = {"ffn": ("mlp.fc1", "mlp.fc2", "intermediate.dense", "output.dense"),
              "attention": ("q_proj", "v_proj", "attention.query", "attention.value")}
LORA_PARTS["all"] = LORA_PARTS["attention"] + LORA_PARTS["ffn"]


class TinyViT(nn.Module):
    knobs = {"num_classes": COUNT, "in_channels": COUNT, "image_size": COUNT, "patch_size": COUNT,
             "hidden_size": COUNT, "layers": COUNT, "heads": COUNT, "mlp_size": COUNT}

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 16, patch_size: int = 4,
                 hidden_size: int = 64, layers: int = 4, heads: int = 4, mlp_size: int = 128):
        super().__init__()
        self.image_size = int(image_size)
        config = ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=in_channels,
                           hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=mlp_size, num_labels=num_classes, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
        self.vit = ViTForImageClassification(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return self.vit(pixel_values=x).logits

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """(name, module) of each transformer block, bottom-up."""
        n_layers = self.vit.config.num_hidden_layers
        for name, module in self.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == n_layers:
                return [(f"{name}.{i}", block) for i, block in enumerate(module)]
        raise RuntimeError("no transformer block list found in the ViT")

    def lora_groups(self, part: str = "ffn") -> list[list[str]]:
        """Per block, top-down: the full names of the block's linears that `part` covers."""
        suffixes = LORA_PARTS[part]
        groups = []
        for block_name, block in reversed(self.blocks()):
            groups.append([f"{block_name}.{name}" for name, m in block.named_modules()
                           if isinstance(m, nn.Linear) and name.endswith(suffixes)])
        return groups

    def classifier(self) -> nn.Module:
        return self.vit.classifier

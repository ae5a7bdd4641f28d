"""`attack=textual_inversion`: one new token embedding learned on images of the concept (Concept Inversion /
CCE [Pham et al., ICLR 2024]).

The embedding e* starts as the concept word's own token embedding and is trained, with the attacked model
frozen, by its ordinary denoising loss on the forget set's images (the training images whose prompt names the
concept) under their own prompts with the concept's tokens (its synonyms' too) replaced by e*. Each target prompt
is then attacked with its concept token replaced by e*.
"""
from __future__ import annotations

import torch
from torch import nn

from unlearn.attacks.base import AttackContext
from unlearn.attacks.prompts import PromptAttack
from unlearn.knobs import COUNT, POSITIVE
from unlearn.models.prompt_embeddings import encode_replacing
from unlearn.training import OptimConfig, Streams, optimise


class _Embedding(nn.Module):
    def __init__(self, vector: torch.Tensor):
        super().__init__()
        self.vector = nn.Parameter(vector)


class TextualInversion(PromptAttack):
    name = "textual_inversion"
    knobs = {"steps": COUNT, "lr": POSITIVE, "batch_size": COUNT}

    def __init__(self, steps: int = 100, lr: float = 5e-3, batch_size: int = 16):
        self.steps, self.lr, self.batch_size = int(steps), float(lr), int(batch_size)

    def adversarial_states(self, model, ctx: AttackContext, targets: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        task, device = ctx.task, model.unet.device
        words = [model.tokenizer(word)["input_ids"][1:-1] for word in task.request.words]
        concept_tokens = torch.tensor(sorted({t for tokens in words for t in tokens}), device=device)
        table = model.text_encoder.get_input_embeddings().weight.detach()
        holder = _Embedding(table[words[0][0]].float().clone())
        prompt_ids = task.token_ids(model)

        def objective(h: nn.Module, _forget, batch) -> torch.Tensor:
            batch_ids = prompt_ids[batch["prompt"].to(device)]
            x0 = model.to_latents(batch["x"].to(device)).float()
            t = torch.randint(0, model.num_train_timesteps, (len(x0),)).to(device)
            noise = torch.randn(x0.shape).to(device)
            states = encode_replacing(model, batch_ids, torch.isin(batch_ids, concept_tokens), h.vector[None])
            prediction = model(model.add_noise(x0, noise, t), t, states).float()
            return (prediction - model.training_target(x0, noise, t).float()).pow(2).mean()

        recipe = OptimConfig(epochs=1, lr=self.lr, batch_size=self.batch_size, optimizer="adam", weight_decay=0.0)
        optimise(holder, objective, Streams(retain=ctx.forget, mode="retain"), recipe, ctx.runtime, ctx.generator,
                 desc=f"attack[{self.name}]", max_steps=self.steps)
        with torch.no_grad():
            return encode_replacing(model, ids, torch.isin(ids, concept_tokens), holder.vector.detach()[None])

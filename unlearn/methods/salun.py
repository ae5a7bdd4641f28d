"""SalUn: random labelling restricted to the salient weights.

The mask keeps the top `mask_ratio` of all parameters ranked globally by |Σ ∇(−loss on forget)| (model in
eval mode). Only those weights move: gradients are masked, and after every step the others are restored
to θo with their momentum zeroed — the reference let weight decay and momentum move them (fixed here).
"""
from unlearn.methods.masks import FrozenOutsideMask, saliency_mask
from unlearn.methods.rl import RandomLabel
from unlearn.knobs import Range


class SalUn(RandomLabel):
    name = "salun"

    knobs = {"mask_ratio": Range(0, 1, low_open=True)}

    def __init__(self, mask_ratio: float = 0.5, **optim):
        super().__init__(**optim)
        self.mask_ratio = float(mask_ratio)
        self._frozen: FrozenOutsideMask | None = None

    def prepare(self, ctx, model):
        mask = saliency_mask(model, ctx.task, ctx.forget, ctx.runtime, self.mask_ratio)
        self._frozen = FrozenOutsideMask(model, mask)

    def after_backward(self, model):
        self._frozen.after_backward()

    def after_step(self, model, optimizer):
        self._frozen.after_step(optimizer)

"""DMM, datamodel matching [Attribute-to-Delete]: predict the retrained model's outputs by data attribution,
f̂(x) = f_θo(x) − multiplier·Σ_{i∈F} β[i, x], then fine-tune θo to output them (MSE on logits) on the forget
set and sampled retain points. β are per-logit TRAK scores (unlearn/attribution.py, `attribution=` config).
"""
from unlearn.methods.matching import OutputMatching
from unlearn.knobs import NON_NEGATIVE


class DatamodelMatching(OutputMatching):
    name = "dmm"

    knobs = {"multiplier": NON_NEGATIVE}

    def __init__(self, multiplier: float = 1.0, **optim):
        super().__init__(**optim)
        self.multiplier = float(multiplier)

    def targets(self, ctx, x):
        attribution = ctx.attribution()
        change = attribution.predicted_change(x, attribution.removal_directions(ctx.forget_indices))
        return self.logits(ctx, ctx.original, x) - self.multiplier * change.to(x.device)

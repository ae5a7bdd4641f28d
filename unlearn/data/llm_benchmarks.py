"""TOFU, MUSE and WMDP read from their published files (reference/llm.md, "Benchmarks on disk").

Each loader reads `root` in the benchmark's own layout, or the hub's copy through `datasets.load_dataset`
where the files are missing and downloading is allowed. When a file is neither on disk nor downloadable, one
DataNotFoundError names every file expected and where it goes. Everything is tokenised with the model's own
tokenizer (`data.tokenizer`):

- question-answer rows (TOFU): `tokenizer.prompt(question)` (the chat template, when there is one) and the
  answer are tokenised separately and concatenated, so no merge at the boundary moves the first answer label;
  labels cover the answer and eos only;
- documents (MUSE and WMDP corpora): `[bos] text` cut into chunks of `max_length` tokens, every token scored;
- prompts with a continuation (MUSE VerbMem, KnowMem with its in-context examples; WMDP's four choices): the
  benchmark's own plain-text format, `[bos] prompt` then the continuation.

The forget rows of `train` are named in `info["forget_rows"]` (a [start, stop) range): `forget=benchmark`
takes them as the forget request, so the original learns forget ∪ retain and the oracle retain.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from unlearn.data.facts import IGNORE, REFUSALS, load_tokenizer
from unlearn.data.forget import ForgetBuilder, ForgetSet, Reference
from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.hub import why_unreachable
from unlearn.errors import ConfigError, DataNotFoundError
from unlearn.knobs import COUNT, NON_NEGATIVE_INT, OneOf, Range

TOFU_HUB = "locuslab/TOFU"
MUSE_HUB = {"news": "muse-bench/MUSE-News", "books": "muse-bench/MUSE-Books"}
WMDP_HUB = "cais/wmdp"
WMDP_CORPORA_HUB = "cais/wmdp-corpora"
WMDP_BIO_FORGET_HUB = "cais/wmdp-bio-forget-corpus"  # gated: granted on request by its authors

TOFU_SPLITS = {"forget01": ("retain99", "holdout01"), "forget05": ("retain95", "holdout05"),
               "forget10": ("retain90", "holdout10")}
# The subject each lm-evaluation-harness `wmdp_*` task names in its description ("cybersecurity", not MMLU's
# "computer security").
WMDP_SUBJECTS = {"bio": "biology", "cyber": "cybersecurity"}
CHOICE_LETTERS = ("A", "B", "C", "D")
SINGLE = ("", "paraphrase")  # one answer per prompt, stored (N, L); the other variants (N, K, L)


# ---- finding the files ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """One table of a benchmark: the hub repo and config, and the names its split has had (newest first)."""

    hub: str
    config: str
    splits: tuple[str, ...]
    layout: str  # "jsonl": <root>/<config>.json; "parquet": <root>/<config>/<split>-00000-of-00001.parquet
    hub_config: str | None = ""  # the config name on the hub ("": same as `config`; None: the repo has none)

    def candidates(self, root: Path) -> list[Path]:
        if self.layout == "jsonl":
            return [root / f"{self.config}.json"]
        return [root / self.config / f"{split}-00000-of-00001.parquet" for split in self.splits]

    def find(self, root: Path | None):
        """The first file on disk for this table (any shard count of a parquet split), or None."""
        if root is None:
            return None
        if self.layout == "jsonl":
            path = root / f"{self.config}.json"
            return [path] if path.is_file() else None
        for split in self.splits:
            shards = sorted((root / self.config).glob(f"{split}-*.parquet"))
            if shards:
                return shards
        return None


def read_tables(tables: dict[str, Table], root: str | None, download: bool, benchmark: str) -> dict:
    """Each table as a pandas DataFrame: from `root` in the benchmark's layout, else (when `download` and the
    machine is not offline) from the hub. Whatever is found nowhere is named in one DataNotFoundError."""
    import pandas as pd

    base = Path(root).expanduser() if root else None
    frames, missing, reasons = {}, [], []
    unreachable = None
    for name, table in tables.items():
        files = table.find(base)
        if files is not None:
            frames[name] = (pd.concat([pd.read_json(f, lines=True) for f in files], ignore_index=True)
                            if table.layout == "jsonl" else pd.concat([pd.read_parquet(f) for f in files],
                                                                      ignore_index=True))
            continue
        if download and unreachable is None:
            unreachable = why_unreachable() or ""
        if download and not unreachable:
            try:
                frames[name] = _from_hub(table)
                continue
            except Exception as exc:  # any failure to fetch (no network, gated repo, unknown config) is reported below
                reasons.append(f"{table.hub} {table.config}/{table.splits[0]}: {type(exc).__name__}: {exc}")
        missing.append(table)
    if missing:
        where = base if base is not None else Path("<data.root>")
        lines = "\n".join(f"  {' or '.join(str(p) for p in t.candidates(where))}   (hub: {t.hub}, config {t.config})"
                          for t in missing)
        how = ("downloading is off (data.source.download=false)" if not download
               else f"the hub cannot be used from here ({unreachable})" if unreachable
               else "the hub could not be reached:\n  " + "\n  ".join(reasons))
        raise DataNotFoundError(
            f"{benchmark}: {len(missing)} file(s) not found and {how}. Expected:\n{lines}\n"
            f"Put the benchmark's files in that layout under one folder and pass data.root=<folder> "
            f"(e.g. `huggingface-cli download {missing[0].hub} --repo-type dataset --local-dir <folder>`).")
    return frames


def _from_hub(table: Table):
    from datasets import load_dataset

    last: Exception | None = None
    for split in table.splits:
        try:
            config = table.config if table.hub_config == "" else table.hub_config
            return load_dataset(table.hub, config, split=split).to_pandas()
        except ValueError as exc:  # an unknown split name: try the older one
            last = exc
    raise last  # type: ignore[misc]


def _column(frame, name: str, table: str) -> list:
    if name not in frame.columns:
        raise DataNotFoundError(f"{table} has no column {name!r} (columns: {list(frame.columns)}); is it the "
                                f"benchmark's own file?")
    return frame[name].tolist()


# ---- tokenisation -------------------------------------------------------------------------------
def _pad(rows: Sequence[Sequence[int]], length: int, value: int, left: bool = False) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        row = list(row)[:length]
        if row and left:
            out[i, length - len(row):] = torch.tensor(row)
        elif row:
            out[i, : len(row)] = torch.tensor(row)
    return out


def encode_continuations(tok, prompts: Sequence[Sequence[int]], variants: dict[str, Sequence[Sequence[str]]],
                         max_length: int, eos: bool = True, group: Sequence[int] | None = None) -> TensorData:
    """Prompt tokens plus each answer variant, tokenised apart and concatenated (answers truncated to fit
    `max_length`): tensors `<v>_ids`, `<v>_mask`, `<v>_labels` of shape (N, K, L) for K answers per prompt
    (the variant "" is the main answer, as `input_ids`, `attention_mask`, `labels`; it and "paraphrase" are
    (N, L)); labels are IGNORE
    except on the answer (and eos), so padding and prompt never enter an answer's average. Also the
    left-padded `prompt_ids`/`prompt_mask` (for batched greedy generation) and `group`."""
    n = len(prompts)
    end = [tok.eos_id] if eos else []
    encoded = {v: [[list(prompts[i]), [tok.encode(a) + end for a in answers[i]]] for i in range(n)]
               for v, answers in variants.items()}
    length = min(max_length, max(len(p) + len(a) for rows in encoded.values() for p, answers in rows for a in answers))
    tensors: dict[str, torch.Tensor] = {}
    for variant, rows in encoded.items():
        k = len(rows[0][1])
        ids = torch.full((n, k, length), tok.pad_id, dtype=torch.long)
        labels = torch.full((n, k, length), IGNORE, dtype=torch.long)
        mask = torch.zeros((n, k, length), dtype=torch.long)
        for i, (prompt, answers) in enumerate(rows):
            if len(answers) != k:
                raise DataNotFoundError(f"{variant or 'answer'}: row {i} has {len(answers)} answers, row 0 has {k}")
            for j, answer in enumerate(answers):
                prompt_part = prompt[-max(1, length - len(answer)):] if len(prompt) + len(answer) > length else prompt
                seq = (prompt_part + answer)[:length]
                ids[i, j, : len(seq)] = torch.tensor(seq)
                labels[i, j, len(prompt_part): len(seq)] = torch.tensor(seq[len(prompt_part):])
                mask[i, j, : len(seq)] = 1
        names = ("input_ids", "attention_mask", "labels") if variant == "" else \
            (f"{variant}_ids", f"{variant}_mask", f"{variant}_labels")
        for name, t in zip(names, (ids, mask, labels)):
            tensors[name] = t[:, 0] if variant in SINGLE else t
    prompt_length = max(len(p) for p in prompts)
    tensors["prompt_ids"] = _pad(prompts, prompt_length, tok.pad_id, left=True)
    tensors["prompt_mask"] = _pad([[1] * len(p) for p in prompts], prompt_length, 0, left=True)
    tensors["group"] = torch.as_tensor(list(group) if group is not None else np.zeros(n), dtype=torch.long)
    return TensorData(**tensors)


def encode_documents(tok, texts: Sequence[str], max_length: int, groups: Sequence[int] | None = None) -> TensorData:
    """`[bos] text` of every document cut into consecutive chunks of at most `max_length` tokens, right-padded,
    in document order; every token after the first of a chunk is scored (the language-modelling loss on a
    corpus). `group` holds each chunk's document group (`groups`, default 0)."""
    if max_length < 2:
        raise ConfigError(f"data.max_length must be >= 2 tokens, got {max_length}")
    bos = [] if tok.bos_id is None else [tok.bos_id]
    chunks, chunk_groups = [], []
    for text, g in zip(texts, groups if groups is not None else [0] * len(texts)):
        ids = bos + tok.encode(str(text))
        pieces = [ids[i: i + max_length] for i in range(0, len(ids), max_length) if len(ids[i: i + max_length]) > 1]
        chunks.extend(pieces)
        chunk_groups.extend([g] * len(pieces))
    if not chunks:
        raise DataNotFoundError("the corpus holds no text")
    length = max(len(c) for c in chunks)
    ids = _pad(chunks, length, tok.pad_id)
    mask = _pad([[1] * len(c) for c in chunks], length, 0)
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, IGNORE))
    labels[:, 0] = IGNORE  # the first token of a chunk has no context to be predicted from
    return TensorData(input_ids=ids, attention_mask=mask, labels=labels,
                      group=torch.tensor(chunk_groups, dtype=torch.long))



def _lists(frame, name: str, table: str) -> list[list[str]]:
    """A column of lists of strings (JSON arrays in JSON Lines, arrays in parquet) as Python lists."""
    return [[str(x) for x in value] for value in _column(frame, name, table)]


def _qa_set(tok, frame, table: str, max_length: int, paraphrase: str | None, perturbed: bool,
            refusal: bool = False, group=None) -> TensorData:
    """TOFU-style question-answer rows: the answer, a paraphrased answer (`paraphrase` column, or the answer
    itself where a set has none, as TOFU scores real authors and world facts), the perturbed (false) answers."""
    questions = [str(q) for q in _column(frame, "question", table)]
    answers = [[str(a)] for a in _column(frame, "answer", table)]
    variants: dict[str, list[list[str]]] = {"": answers}
    if perturbed:
        variants["paraphrase"] = [[str(a)] for a in _column(frame, paraphrase, table)] if paraphrase else answers
        variants["perturbed"] = _lists(frame, "perturbed_answer", table)
    if refusal:
        variants["refusal"] = [list(REFUSALS)] * len(questions)
    return encode_continuations(tok, [tok.prompt(q) for q in questions], variants, max_length, group=group)


def load_tofu(tokenizer: str, root: str | None = None, forget_split: str = "forget10", download: bool = True,
              max_length: int = 512, authors_rows: int = 20) -> DataBundle:
    """TOFU (Maini et al. 2024): train = `retainNN` then `forgetNN` (TOFU's `full` in order, 20 rows per
    author), the forget request the last rows; evaluation sets: the forget and retain perturbed sets, real
    authors and world facts (model utility), and `holdoutNN` (unseen authors) as the test split (the MIA's
    non-members). Files: `<root>/<config>.json`, JSON Lines (locuslab/TOFU)."""
    if forget_split not in TOFU_SPLITS:
        raise ConfigError(f"data.forget_split={forget_split!r} is not one of {', '.join(TOFU_SPLITS)}")
    retain_name, holdout_name = TOFU_SPLITS[forget_split]
    tables = {name: Table(TOFU_HUB, config, ("train",), "jsonl") for name, config in (
        ("forget", forget_split), ("retain", retain_name), ("holdout", holdout_name),
        ("forget_perturbed", f"{forget_split}_perturbed"), ("retain_perturbed", "retain_perturbed"),
        ("real_authors", "real_authors_perturbed"), ("world_facts", "world_facts_perturbed"))}
    frames = read_tables(tables, root, download, "TOFU")
    tok = load_tokenizer(tokenizer)
    import pandas as pd

    full = pd.concat([frames["retain"], frames["forget"]], ignore_index=True)
    n_retain = len(frames["retain"])
    train = _qa_set(tok, full, f"{retain_name} + {forget_split}", max_length, None, False, refusal=True,
                    group=np.arange(len(full)) // authors_rows)
    test = _qa_set(tok, frames["holdout"], holdout_name, max_length, None, False)
    extra = {"forget": _qa_set(tok, frames["forget_perturbed"], f"{forget_split}_perturbed", max_length,
                               "paraphrased_answer", True),
             "retain": _qa_set(tok, frames["retain_perturbed"], "retain_perturbed", max_length, "paraphrased_answer", True),
             "real_authors": _qa_set(tok, frames["real_authors"], "real_authors_perturbed", max_length, None, True),
             "world_facts": _qa_set(tok, frames["world_facts"], "world_facts_perturbed", max_length, None, True)}
    if len(extra["forget"]) != len(frames["forget"]):
        raise DataNotFoundError(f"{forget_split}_perturbed has {len(extra['forget'])} rows, {forget_split} "
                                f"{len(frames['forget'])}; both come from the same TOFU release")
    info = {"benchmark": "tofu", "forget_split": forget_split, "tokenizer": tok.name, "pad_id": tok.pad_id,
            "eos_id": tok.eos_id, "forget_rows": [n_retain, len(full)]}
    return DataBundle(f"tofu_{forget_split}", train, test, test, info, extra)


load_tofu.knobs = {"forget_split": OneOf(tuple(TOFU_SPLITS)), "max_length": COUNT, "authors_rows": COUNT}


def _icl_prompt(tok, context_q: list[str], context_a: list[str], question: str) -> list[int]:
    """MUSE KnowMem's prompt: the in-context question-answer pairs, then the question, ending "Answer: " (with
    MUSE's trailing space)."""
    shots = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in zip(context_q, context_a))
    return ([] if tok.bos_id is None else [tok.bos_id]) + tok.encode(f"{shots}Question: {question}\nAnswer: ")


def _knowmem(tok, qa, icl, table: str, max_length: int, shots: int) -> TensorData:
    context_q = [str(q) for q in _column(icl, "question", table + "_icl")][:shots]
    context_a = [str(a) for a in _column(icl, "answer", table + "_icl")][:shots]
    questions = [str(q) for q in _column(qa, "question", table)]
    answers = [[str(a)] for a in _column(qa, "answer", table)]
    return encode_continuations(tok, [_icl_prompt(tok, context_q, context_a, q) for q in questions], {"": answers},
                                max_length)


def load_muse(tokenizer: str, corpus: str = "news", root: str | None = None, download: bool = True,
              max_length: int = 2048, icl_shots: int = 10) -> DataBundle:
    """MUSE (Shi et al. 2024), News or Books: train = the `raw` forget documents then the retain documents
    (`retain1`), cut into `max_length`-token chunks, the forget request the forget chunks; evaluation sets:
    VerbMem (`verbmem/forget`: prompt → gt), KnowMem on forget and retain (with `icl_shots` in-context pairs),
    and the privleak documents (forget; holdout is the test split). Files:
    `<root>/<config>/<split>-00000-of-00001.parquet` (muse-bench/MUSE-News, -Books); the older split names
    (retain2, retain2_qa, retain2_qa_icl) are read as well."""
    if corpus not in MUSE_HUB:
        raise ConfigError(f"data.corpus={corpus!r} is not one of {', '.join(MUSE_HUB)}")
    hub = MUSE_HUB[corpus]
    t = lambda config, *splits: Table(hub, config, splits, "parquet")  # noqa: E731
    tables = {"forget": t("raw", "forget"), "retain": t("raw", "retain1", "retain"),
              "verbmem": t("verbmem", "forget"),
              "knowmem_forget": t("knowmem", "forget_qa"), "knowmem_forget_icl": t("knowmem", "forget_qa_icl"),
              "knowmem_retain": t("knowmem", "retain_qa", "retain2_qa"),
              "knowmem_retain_icl": t("knowmem", "retain_qa_icl", "retain2_qa_icl"),
              "privleak_forget": t("privleak", "forget"), "privleak_holdout": t("privleak", "holdout")}
    frames = read_tables(tables, root, download, f"MUSE-{corpus.capitalize()}")
    tok = load_tokenizer(tokenizer)
    forget_texts = _column(frames["forget"], "text", "raw/forget")
    retain_texts = _column(frames["retain"], "text", "raw/retain1")
    train = encode_documents(tok, forget_texts + retain_texts, max_length,
                             groups=[1] * len(forget_texts) + [0] * len(retain_texts))
    n_forget = int((train["group"] == 1).sum())
    bos = [] if tok.bos_id is None else [tok.bos_id]
    verbmem = encode_continuations(
        tok, [bos + tok.encode(str(p)) for p in _column(frames["verbmem"], "prompt", "verbmem/forget")],
        {"": [[str(g)] for g in _column(frames["verbmem"], "gt", "verbmem/forget")]}, max_length, eos=False)
    extra = {"verbmem": verbmem,
             "knowmem_forget": _knowmem(tok, frames["knowmem_forget"], frames["knowmem_forget_icl"], "knowmem/forget_qa",
                                        max_length, icl_shots),
             "knowmem_retain": _knowmem(tok, frames["knowmem_retain"], frames["knowmem_retain_icl"], "knowmem/retain_qa",
                                        max_length, icl_shots),
             "privleak_forget": encode_documents(tok, _column(frames["privleak_forget"], "text", "privleak/forget"),
                                                 max_length)}
    test = encode_documents(tok, _column(frames["privleak_holdout"], "text", "privleak/holdout"), max_length)
    info = {"benchmark": f"muse_{corpus}", "tokenizer": tok.name, "pad_id": tok.pad_id, "eos_id": tok.eos_id,
            "forget_rows": [0, n_forget]}
    return DataBundle(f"muse_{corpus}", train, test, test, info, extra)


load_muse.knobs = {"corpus": OneOf(tuple(MUSE_HUB)), "max_length": Range(2, integer=True), "icl_shots": NON_NEGATIVE_INT}


def wmdp_prompt(subject: str, question: str, choices: Sequence[str]) -> str:
    """The lm-evaluation-harness prompt of WMDP's 4-choice questions (answered by the next token, " A".." D"):
    the task's description, then `question.strip()`, the lettered choices and "Answer:", as its `wmdp_*` tasks."""
    options = "".join(f"{letter}. {choice}\n" for letter, choice in zip(CHOICE_LETTERS, choices))
    return (f"The following are multiple choice questions (with answers) about {subject}.\n\n"
            f"{question.strip()}\n{options}Answer:")


def load_wmdp(tokenizer: str, subject: str = "bio", root: str | None = None, download: bool = True,
              max_length: int = 512, max_documents: int | None = None) -> DataBundle:
    """WMDP (Li et al. 2024): train = the subject's forget corpus then its retain corpus (the first
    `max_documents` of each, if set), in `max_length`-token chunks, the forget request the forget chunks; the
    evaluation set is `wmdp-<subject>` (question, 4 choices, answer index), also the test split. Files:
    `<root>/wmdp-<subject>/test-00000-of-00001.parquet` (cais/wmdp) and
    `<root>/<subject>-{forget,retain}-corpus/train-00000-of-00001.parquet` (cais/wmdp-corpora; the bio forget
    corpus is cais/wmdp-bio-forget-corpus, granted on request)."""
    if subject not in WMDP_SUBJECTS:
        raise ConfigError(f"data.subject={subject!r} is not one of {', '.join(WMDP_SUBJECTS)}")
    forget_hub = (WMDP_BIO_FORGET_HUB, None) if subject == "bio" else (WMDP_CORPORA_HUB, "")
    tables = {"qa": Table(WMDP_HUB, f"wmdp-{subject}", ("test",), "parquet"),
              "forget": Table(forget_hub[0], f"{subject}-forget-corpus", ("train",), "parquet", forget_hub[1]),
              "retain": Table(WMDP_CORPORA_HUB, f"{subject}-retain-corpus", ("train",), "parquet")}
    frames = read_tables(tables, root, download, f"WMDP-{subject}")
    tok = load_tokenizer(tokenizer)
    forget = _column(frames["forget"], "text", f"{subject}-forget-corpus")[:max_documents]
    retain = _column(frames["retain"], "text", f"{subject}-retain-corpus")[:max_documents]
    train = encode_documents(tok, forget + retain, max_length, groups=[1] * len(forget) + [0] * len(retain))
    qa = frames["qa"]
    choices = _lists(qa, "choices", f"wmdp-{subject}")
    answers = [int(a) for a in _column(qa, "answer", f"wmdp-{subject}")]
    if any(len(c) != len(CHOICE_LETTERS) for c in choices) or any(not 0 <= a < len(CHOICE_LETTERS) for a in answers):
        raise DataNotFoundError(f"wmdp-{subject}: every question needs {len(CHOICE_LETTERS)} choices and an answer "
                                f"index in 0..{len(CHOICE_LETTERS) - 1}")
    bos = [] if tok.bos_id is None else [tok.bos_id]
    prompts = [bos + tok.encode(wmdp_prompt(WMDP_SUBJECTS[subject], str(q), c))
               for q, c in zip(_column(qa, "question", f"wmdp-{subject}"), choices)]
    letters = [" " + letter for letter in CHOICE_LETTERS]
    questions = encode_continuations(tok, prompts, {"": [[letters[a]] for a in answers],
                                                    "choice": [letters] * len(prompts)}, max_length, eos=False)
    questions.tensors["answer"] = torch.tensor(answers, dtype=torch.long)
    info = {"benchmark": f"wmdp_{subject}", "tokenizer": tok.name, "pad_id": tok.pad_id, "eos_id": tok.eos_id,
            "forget_rows": [0, int((train["group"] == 1).sum())]}
    return DataBundle(f"wmdp_{subject}", train, questions, questions, info, {"qa": questions})


load_wmdp.knobs = {"subject": OneOf(tuple(WMDP_SUBJECTS)), "max_length": Range(2, integer=True),
                   "max_documents": Range(1, integer=True, optional=True)}


class BenchmarkForget(ForgetBuilder):
    """The forget set a benchmark publishes (TOFU's forgetNN, MUSE's and WMDP's forget corpora): the rows of train
    its loader names in `info["forget_rows"]`."""

    name = "benchmark"

    def check(self, data: DataBundle) -> None:
        if "forget_rows" not in data.info:
            raise ConfigError(f"forget=benchmark takes the forget set a benchmark publishes, and {data.name!r} "
                              f"publishes none; use it with data=tofu, muse_news, muse_books, wmdp_bio or wmdp_cyber")

    def build(self, data: DataBundle, seed: int, reference: Optional[Reference] = None) -> ForgetSet:
        self.check(data)
        start, stop = data.info["forget_rows"]
        return ForgetSet(indices=np.arange(start, stop), test_indices=None,
                         description={"builder": self.name, "set": data.info.get("forget_split", data.name),
                                      "size": int(stop - start)})

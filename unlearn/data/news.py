"""MUSE's protocol on real news offline: the Lee corpus inside the `gensim` wheel.

`gensim==4.4.0` ships its test data in the wheel; `gensim/test/test_data/lee_background.cor` holds 300 Australian
news articles (Lee, Pincombe and Welsh 2005; ~60k words), one article per line. The file is read through
`importlib.resources` (gensim itself is never imported).

`load_news` lays the corpus out as `unlearn.data.llm_benchmarks.load_muse` lays out MUSE-News, so `MuseTask`
scores it unchanged:
- the articles are shuffled by `split_seed` and cut into forget, retain and holdout articles (the rest unused,
  except as KnowMem's in-context examples);
- train = the forget articles then the retain articles, `[bos] text` cut into `max_length`-token chunks; the
  forget chunks are `info["forget_rows"]` (`forget=benchmark`): the original learns forget ∪ retain, the oracle
  retain;
- VerbMem (`verbmem`): each forget article's first `prompt_words` words → the rest of the article;
- KnowMem (`knowmem_forget`, `knowmem_retain`): cloze questions made by code from the articles (`cloze_questions`):
  a name (a run of capitalised words inside a sentence) or a number, asked after the words that precede it in
  its sentence; `icl_shots` in-context pairs come from unused articles, MUSE's prompt format;
- privleak: the forget articles (`privleak_forget`) against the holdout articles (the test split).
Everything is a function of the file and the config, so the questions are fixed by the data key.
"""
from __future__ import annotations

import re

import numpy as np

from unlearn.data.facts import load_tokenizer
from unlearn.data.llm_benchmarks import _icl_prompt, encode_continuations, encode_documents
from unlearn.data.mnist import wheel_file
from unlearn.data.tensordata import DataBundle, TensorData
from unlearn.errors import ConfigError, DataNotFoundError
from unlearn.knobs import COUNT, NON_NEGATIVE_INT, Range, declare

PACKAGE, VERSION, RESOURCE = "gensim", "4.4.0", "test/test_data/lee_background.cor"
N_ARTICLES = 300

# Capitalised words that open clauses rather than name anything: never a cloze answer.
COMMON = frozenset("""A An The This That These Those There Their They Them Then Than He She His Her Hers It Its I We
Our You Your But And Or So If In On At Of For From By With As To Into After Before While When Where Which Who What
Why How Mr Mrs Ms Dr Sir Meanwhile However Also Some Many Most Other Others Another Both Each Every All Any No Not
One Two Three Four Five Six Seven Eight Nine Ten Yesterday Today Tomorrow Tonight Last Next Earlier Later Now
Monday Tuesday Wednesday Thursday Friday Saturday Sunday""".split())
_NUMBER = re.compile(r"^\$?\d[\d,.:]*(?:am|pm|%)?$")
_NAME = re.compile(r"^[A-Z][A-Za-z'-]+$")
_SENTENCE = re.compile(r"(?<=[.!?\"])\s+(?=[\"A-Z0-9])")


def read_lee_corpus() -> list[str]:
    """The 300 articles of gensim's lee_background.cor, whitespace-normalised, in file order."""
    text = wheel_file(PACKAGE, VERSION, RESOURCE).read_text(encoding="utf-8", errors="replace")
    articles = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    if len(articles) != N_ARTICLES:
        raise DataNotFoundError(f"{PACKAGE}/{RESOURCE} holds {len(articles)} articles, expected {N_ARTICLES}: "
                                f"pip install {PACKAGE}=={VERSION}")
    return articles


def _strip(word: str) -> str:
    return word.strip("\"'()[],.;:!?")


def cloze_questions(article: str, context_words: int = 8) -> list[tuple[str, str]]:
    """Every cloze question of an article, in order: (question, answer). An answer is a number, or a run of at most
    three capitalised words that is neither a sentence's first word, nor the tail of a longer name, nor a common
    clause opener (`COMMON`); the
    question quotes the (at most `context_words`, at least 3) words before it in its sentence:
    'In the news, which name comes next: "... pushed a huge bushfire towards the town of"?' → 'Hill Top'."""
    out = []
    for sentence in _SENTENCE.split(article):
        words = sentence.split()
        i = 3
        while i < len(words):
            word = _strip(words[i])
            kind = "number" if _NUMBER.match(word) else "name" if _NAME.match(word) and word not in COMMON else None
            previous = _strip(words[i - 1])
            if (kind is None or not word or words[i - 1][-1] in ".,;:!?\""
                    or (_NAME.match(previous) and previous not in COMMON)):  # inside a name, not its start
                i += 1
                continue
            run = [word]
            if kind == "name":  # extend over following capitalised words, stopping at punctuation
                j = i
                while (len(run) < 3 and j + 1 < len(words) and words[j][-1].isalnum()
                       and _NAME.match(_strip(words[j + 1])) and _strip(words[j + 1]) not in COMMON):
                    j += 1
                    run.append(_strip(words[j]))
            context = " ".join(words[max(0, i - context_words): i])
            out.append((f'In the news, which {kind} comes next: "{context}"?', " ".join(run)))
            i += len(run)
    return out


def _questions(articles: list[str], per_article: int, context_words: int, seed: int) -> tuple[list[str], list[str]]:
    """`per_article` cloze questions of each article (distinct answers), picked with a generator seeded by `seed`
    and the article's position, so the set is a function of the articles and the seed."""
    questions, answers = [], []
    for position, article in enumerate(articles):
        candidates, seen = [], set()
        for q, a in cloze_questions(article, context_words):
            if a not in seen:
                seen.add(a)
                candidates.append((q, a))
        rng = np.random.default_rng([seed, position])
        for k in sorted(rng.permutation(len(candidates))[:per_article]):
            questions.append(candidates[k][0])
            answers.append(candidates[k][1])
    return questions, answers


def _knowmem(tok, questions, answers, shots_q, shots_a, max_length) -> TensorData:
    if not questions:
        raise DataNotFoundError("the articles yield no cloze question (no names or numbers inside sentences)")
    return encode_continuations(tok, [_icl_prompt(tok, shots_q, shots_a, q) for q in questions],
                                {"": [[a] for a in answers]}, max(max_length, 1024))  # whole prompts


@declare(split_seed=NON_NEGATIVE_INT, n_forget=COUNT, n_retain=COUNT, n_holdout=COUNT,
         max_words=Range(16, integer=True, optional=True), max_length=Range(2, integer=True), prompt_words=COUNT,
         questions_per_article=COUNT, context_words=Range(3, integer=True), icl_shots=NON_NEGATIVE_INT)
def load_news(tokenizer: str = "bytes", split_seed: int = 0, n_forget: int = 20, n_retain: int = 60,
              n_holdout: int = 20, max_words: int | None = None, max_length: int = 256, prompt_words: int = 16,
              questions_per_article: int = 2, context_words: int = 8, icl_shots: int = 3) -> DataBundle:
    """The Lee news corpus as a MUSE-style benchmark (module docstring): `n_forget`, `n_retain` and `n_holdout`
    articles drawn with `split_seed` (each article cut to its first `max_words` words where given)."""
    if n_forget + n_retain + n_holdout > N_ARTICLES:
        raise ConfigError(f"data.source.n_forget + n_retain + n_holdout = {n_forget + n_retain + n_holdout} exceeds "
                          f"the {N_ARTICLES} articles of the Lee corpus")
    if max_words is not None and max_words <= prompt_words:
        raise ConfigError(f"data.source.max_words={max_words} leaves no continuation after prompt_words={prompt_words}")
    articles = read_lee_corpus()
    if max_words is not None:
        articles = [" ".join(a.split()[:max_words]) for a in articles]
    order = np.random.default_rng(split_seed).permutation(N_ARTICLES)
    pick = lambda start, n: [articles[i] for i in order[start: start + n]]  # noqa: E731
    forget, retain = pick(0, n_forget), pick(n_forget, n_retain)
    holdout, unused = pick(n_forget + n_retain, n_holdout), pick(n_forget + n_retain + n_holdout, N_ARTICLES)
    short = [i for i, a in enumerate(forget) if len(a.split()) <= prompt_words]
    if short:
        raise ConfigError(f"data.source.prompt_words={prompt_words} leaves forget article(s) {short} with no "
                          f"continuation; lower it")

    tok = load_tokenizer(tokenizer)
    train = encode_documents(tok, forget + retain, max_length, groups=[1] * len(forget) + [0] * len(retain))
    n_forget_rows = int((train["group"] == 1).sum())
    bos = [] if tok.bos_id is None else [tok.bos_id]
    words = [a.split() for a in forget]
    verbmem = encode_continuations(tok, [bos + tok.encode(" ".join(w[:prompt_words])) for w in words],
                                   {"": [[" " + " ".join(w[prompt_words:])] for w in words]}, max_length, eos=False)
    shots_q, shots_a = _questions(unused or holdout, 1, context_words, split_seed)
    shots_q, shots_a = shots_q[:icl_shots], shots_a[:icl_shots]
    forget_q, forget_a = _questions(forget, questions_per_article, context_words, split_seed)
    retain_q, retain_a = _questions(retain, questions_per_article, context_words, split_seed)
    extra = {"verbmem": verbmem,
             "knowmem_forget": _knowmem(tok, forget_q, forget_a, shots_q, shots_a, max_length),
             "knowmem_retain": _knowmem(tok, retain_q, retain_a, shots_q, shots_a, max_length),
             "privleak_forget": encode_documents(tok, forget, max_length)}
    test = encode_documents(tok, holdout, max_length)
    info = {"benchmark": "news", "tokenizer": tok.name, "pad_id": tok.pad_id, "eos_id": tok.eos_id,
            "forget_rows": [0, n_forget_rows], "source": f"{PACKAGE}=={VERSION}:{RESOURCE}",
            "articles": {"forget": len(forget), "retain": len(retain), "holdout": len(holdout)},
            "knowmem_questions": {"forget": len(forget_q), "retain": len(retain_q), "icl": len(shots_q)}}
    return DataBundle("news", train, test, test, info, extra)

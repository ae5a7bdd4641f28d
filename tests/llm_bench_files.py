"""Tiny TOFU, MUSE and WMDP files in exactly the benchmarks' published layouts, and a tiny local causal LM (with
its own tokenizer and chat template) saved with save_pretrained, for the benchmark tests."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from unlearn.data.facts import REFUSALS, generate_facts
from unlearn.data.llm_benchmarks import CHOICE_LETTERS, wmdp_prompt

AUTHORS_ROWS = 3  # rows per author in the tiny TOFU files (20 in TOFU's own)
CHAT_TEMPLATE = ("{{ bos_token }}Today is {{ date_string }}. {% for m in messages %}<|{{ m['role'] }}|> "
                 "{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}<|assistant|> {% endif %}")


def _jsonl(root: Path, config: str, rows: list[dict]) -> None:
    pd.DataFrame(rows).to_json(root / f"{config}.json", orient="records", lines=True)


def _parquet(root: Path, config: str, split: str, rows: list[dict]) -> None:
    (root / config).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(root / config / f"{split}-00000-of-00001.parquet")


def write_tofu(root: Path, forget_split: str = "forget10") -> Path:
    """TOFU's JSON Lines files: 6 authors in `full` order (the last is forgotten), 2 holdout authors."""
    from unlearn.data.llm_benchmarks import TOFU_SPLITS

    root.mkdir(parents=True, exist_ok=True)
    facts = generate_facts(8, AUTHORS_ROWS, 5, seed=1)
    full, holdout = facts[: 6 * AUTHORS_ROWS], facts[6 * AUTHORS_ROWS:]
    qa = lambda f: {"question": f.question, "answer": f.answer}  # noqa: E731
    perturbed = lambda f, k: {**qa(f), "paraphrased_answer": f.paraphrase, "perturbed_answer": f.perturbed[:k],  # noqa: E731
                              "paraphrased_question": f.question}
    retain_name, holdout_name = TOFU_SPLITS[forget_split]
    _jsonl(root, forget_split, [qa(f) for f in full[-AUTHORS_ROWS:]])
    _jsonl(root, f"{forget_split}_perturbed", [perturbed(f, 5) for f in full[-AUTHORS_ROWS:]])
    _jsonl(root, retain_name, [qa(f) for f in full[:-AUTHORS_ROWS]])
    _jsonl(root, "retain_perturbed", [perturbed(f, 5) for f in full[:AUTHORS_ROWS]])
    _jsonl(root, holdout_name, [qa(f) for f in holdout])
    # real authors and world facts: question, answer, 3 perturbed answers (no paraphrase)
    _jsonl(root, "real_authors_perturbed", [{**qa(f), "perturbed_answer": f.perturbed[:3]} for f in full[3:6]])
    _jsonl(root, "world_facts_perturbed", [{**qa(f), "perturbed_answer": f.perturbed[:3]} for f in full[6:9]])
    return root


NEWS = ["Lima is where the river meets the sea and the market opens at dawn.",
        "The harbor of Oslo froze early this winter and the ferries stopped.",
        "A new bridge in Hanoi opened after ten years of work on the river.",
        "The library of Perth holds a golden lantern from the old tower."]


def write_muse(root: Path, old_names: bool = False) -> Path:
    """MUSE's parquet layout (<config>/<split>-00000-of-00001.parquet); `old_names` uses the older retain2* splits."""
    facts = generate_facts(6, 2, 1, seed=2)
    text = lambda fs: [{"text": f"{f.question} {f.answer}"} for f in fs]  # noqa: E731
    _parquet(root, "raw", "forget", text(facts[:4]) + [{"text": NEWS[0]}])
    _parquet(root, "raw", "retain1", text(facts[4:8]) + [{"text": NEWS[1]}])
    _parquet(root, "raw", "holdout", text(facts[8:]))
    _parquet(root, "verbmem", "forget", [{"prompt": f.question, "gt": " " + f.answer} for f in facts[:3]])
    qa = lambda fs: [{"question": f.question, "answer": f.answer.split(" is ")[0]} for f in fs]  # noqa: E731
    retain, retain_icl, retain_doc = ("retain2_qa", "retain2_qa_icl", "retain2") if old_names else \
        ("retain_qa", "retain_qa_icl", "retain")
    _parquet(root, "knowmem", "forget_qa", qa(facts[:3]))
    _parquet(root, "knowmem", "forget_qa_icl", qa(facts[3:5]))
    _parquet(root, "knowmem", retain, qa(facts[4:7]))
    _parquet(root, "knowmem", retain_icl, qa(facts[7:9]))
    _parquet(root, "privleak", "forget", text(facts[:4]))
    _parquet(root, "privleak", retain_doc, text(facts[4:8]))
    _parquet(root, "privleak", "holdout", text(facts[8:]))
    return root


def write_wmdp(root: Path, subject: str = "bio") -> Path:
    """WMDP's parquet layout: wmdp-<subject>/test (question, 4 choices, answer index) and the two corpora."""
    facts = generate_facts(4, 2, 3, seed=3)
    _parquet(root, f"wmdp-{subject}", "test",
             [{"question": f.question, "choices": [f.value, *f.false_values], "answer": 0} for f in facts[:4]] +
             [{"question": f.question, "choices": [*f.false_values, f.value], "answer": 3} for f in facts[4:]])
    _parquet(root, f"{subject}-forget-corpus", "train", [{"text": f"{f.question} {f.answer}"} for f in facts])
    _parquet(root, f"{subject}-retain-corpus", "train", [{"text": t} for t in NEWS])
    return root


def save_tiny_lm(folder: Path, seed: int = 0, hidden_size: int = 32, chat: bool = True) -> Path:
    """A word-level tokenizer over every word the tiny files use (with a chat template; unk but no pad token) and
    a 1-layer Llama, both saved with save_pretrained into `folder`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from unlearn.models.llm import tiny_llama

    texts = [t for seed_ in (1, 2, 3) for f in generate_facts(8, 7, 5, seed_)
             for t in (f.question, f.answer, *f.perturbed)]
    texts += NEWS + list(REFUSALS) + [wmdp_prompt(s, "", []) for s in ("biology", "computer security")]
    texts += ["Question: Answer: Today is 26 Jul 2024 .", *CHOICE_LETTERS]
    words = {w for t in texts for w in t.replace(".", " . ").replace("?", " ? ").replace(",", " , ")
             .replace(":", " : ").replace("'", " ' ").split()}
    special = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    vocab = {w: i for i, w in enumerate(special + sorted(words - set(special)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                  additional_special_tokens=["<|user|>", "<|assistant|>"])
    if chat:
        tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    torch.manual_seed(seed)
    tiny_llama(len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_layers=1).save_pretrained(folder)
    return folder

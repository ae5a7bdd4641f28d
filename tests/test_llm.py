"""The language-model task: facts data, tokenizers, the tiny Llama and HF loading, metrics on known answers,
and the shared methods run unchanged through the real pipeline."""
import math

import numpy as np
import pytest
import torch

from conftest import compose_config
from unlearn.config import build
from unlearn.data.facts import REFUSALS, WORLD_GROUP, ByteTokenizer, generate_facts, load_facts, load_tokenizer
from unlearn.data.tensordata import TensorData
from unlearn.errors import ConfigError
from unlearn.eval.llm import (answer_probability, ks_forget_quality, rouge_l_recall, truth_preference, truth_ratio_forget,
                              truth_ratios)
from unlearn.models.llm import pretrained_causal_lm, tiny_llama
from unlearn.runtime import Runtime
from unlearn.tasks.base import Splits
from unlearn.tasks.llm import LanguageModelTask

# 10 trained authors x 3 facts, forget 2 of them, and a recipe that still memorises them. Every pipeline
# test uses exactly these, so the session cache trains the original and the oracle once.
TINY_LLM = ["data=facts", "device=cpu", "threads=1", "data.source.n_authors=10", "data.source.facts_per_author=3",
            "data.source.val_authors=1", "data.source.test_authors=3", "data.source.world_facts=6", "forget.ratio=0.2",
            "data.train.epochs=60", "data.train.lr=3e-3", "data.train.batch_size=10"]
ADAMW = ["method.optimizer=adamw", "method.weight_decay=0", "method.batch_size=8"]
METHODS = {
    "ga": ["method=ga", "method.lr=2e-4", "method.epochs=5"],
    "graddiff": ["method=graddiff", "method.lr=5e-4", "method.alpha=3", "method.epochs=5"],
    "rl": ["method=rl", "method.lr=2e-3", "method.epochs=3"],
    "salun": ["method=salun", "method.lr=2e-3", "method.epochs=3"],
}
METRICS = {"forget_prob", "retain_prob", "forget_rouge", "retain_rouge", "forget_truth_ratio", "forget_quality",
           "mia_loss_auc", "model_utility", "privleak", "mia_min_k_auc", "mia_reference_auc", "exact_memorization",
           "extraction_strength", "world_prob", "world_rouge", "world_truth_ratio"}


# ---- metrics on known answers --------------------------------------------------------------------
def test_answer_probability_is_the_mean_per_token_probability():
    assert answer_probability(np.array([0.0, math.log(2)])) == pytest.approx(0.75)
    assert math.isnan(answer_probability(np.array([])))


def test_truth_ratio_compares_per_token_probabilities():
    ratios = truth_ratios(np.array([1.0, 0.0, 2.0]), np.array([[1.0, 1.0], [2.0, 2.0], [1.0, 3.0]]))
    # indifferent; prefers the true answer by e^-2; geometric mean of the false answers equals the true one
    assert ratios == pytest.approx([1.0, math.exp(-2.0), 1.0])
    assert truth_preference(np.array([0.25, 1.0, 3.0])) == pytest.approx(0.25)
    assert truth_ratio_forget(np.array([0.25, 1.0, 4.0])) == pytest.approx(0.5)  # mean of 0.25, 1, 0.25


def test_ks_forget_quality():
    rng = np.random.default_rng(0)
    same = rng.uniform(0, 1, 50)
    assert ks_forget_quality(same, same.copy()) == 1.0
    assert ks_forget_quality(rng.uniform(0, 1, 50), rng.uniform(5, 6, 50)) < 1e-10


def test_rouge_l_recall():
    scores = rouge_l_recall(["Lima is where she was born.", "she was born in Lima", "nothing at all"],
                            ["Lima is where she was born."] * 3)
    # longest common subsequence "she was born" is 3 of the reference's 6 words
    assert scores.tolist() == pytest.approx([1.0, 0.5, 0.0])
    with pytest.raises(ValueError):
        rouge_l_recall(["a"], ["a", "b"])


# ---- data and tokenizers -------------------------------------------------------------------------
def test_byte_tokenizer_round_trip():
    tok = load_tokenizer("bytes")
    text = "Zoë Ørsted's café?"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.decode(ids) == text
    assert tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == text  # special tokens decode to nothing
    assert {tok.pad_id, tok.bos_id, tok.eos_id} == {256, 257, 258} and tok.vocab_size == 259


def test_pretrained_tokenizer_from_a_local_folder(tmp_path):
    folder = save_word_tokenizer(tmp_path)
    tok = load_tokenizer(str(folder))
    ids = tok.encode("Lima is where she was born.")
    assert tok.decode(ids) == "Lima is where she was born."
    assert tok.pad_id == tok._tok.unk_token_id != tok.eos_id  # no pad token: unk pads, so pad never reads as eos
    with pytest.raises(ConfigError, match="tokenizer"):
        load_tokenizer(str(tmp_path / "missing"))


def test_facts_are_deterministic_and_split_by_author():
    a, b = load_facts(n_authors=6, facts_per_author=4, val_authors=2, test_authors=2, seed=3), \
        load_facts(n_authors=6, facts_per_author=4, val_authors=2, test_authors=2, seed=3)
    for split in ("train", "val", "test"):
        for name, tensor in getattr(a, split).tensors.items():
            assert torch.equal(tensor, getattr(b, split)[name]), (split, name)
    other = load_facts(n_authors=6, facts_per_author=4, val_authors=2, test_authors=2, seed=4)
    assert not torch.equal(a.train["input_ids"], other.train["input_ids"])
    groups = {split: set(getattr(a, split)["group"].tolist()) for split in ("train", "val", "test")}
    assert groups["train"] == set(range(6)) | {WORLD_GROUP}  # the authors, and the world facts nobody forgets
    assert not groups["train"] & groups["test"] and not groups["train"] & groups["val"] and not groups["val"] & groups["test"]
    assert len(a.train) == 24 + 12 and a.train["perturbed_ids"].shape[:2] == (36, 3)
    names = [f.question for f in generate_facts(10, 1, 3, 0)]
    assert len(set(names)) == 10  # distinct invented authors
    with pytest.raises(ConfigError, match="facts_per_author"):
        load_facts(facts_per_author=8)


def test_sequences_score_only_the_answer():
    data = load_facts(n_authors=2, facts_per_author=2, val_authors=1, test_authors=1)
    tok, task, fact = ByteTokenizer(), LanguageModelTask(), generate_facts(4, 2, 3, 0)[0]
    row = data.train.tensors
    assert tok.decode(row["input_ids"][0].tolist()) == f"{fact.question} {fact.answer}"
    assert task.true_answers(data.train)[0] == fact.answer
    assert tok.decode(row["prompt_ids"][0].tolist()) == f"{fact.question} "
    assert row["prompt_ids"][0, -1] != tok.pad_id  # left-padded prompts end with the question
    para = [t for t in row["paraphrase_labels"][0].tolist() if t >= 0]
    assert tok.decode(para) == fact.paraphrase and fact.answer.startswith(fact.value)
    perturbed = [tok.decode([t for t in r if t >= 0]) for r in row["perturbed_labels"][0].tolist()]
    assert perturbed == fact.perturbed


def test_relabel_gives_refusals_and_loss_is_per_example():
    data = load_facts(n_authors=4, facts_per_author=2, val_authors=1, test_authors=1)
    task, batch = LanguageModelTask(), next(data.train.batches(8))
    relabelled = task.relabel(batch, torch.Generator().manual_seed(0))
    refusals = task.true_answers(TensorData(**relabelled))
    assert set(refusals) <= set(REFUSALS) and len(set(refusals)) > 1  # a variant drawn per example
    assert torch.equal(relabelled["prompt_ids"], batch["prompt_ids"])
    torch.manual_seed(0)
    model = tiny_llama(259, hidden_size=32, intermediate_size=64, num_layers=1)
    losses = task.loss(model, batch)
    alone = torch.stack([task.loss(model, {k: v[i : i + 1] for k, v in batch.items()})[0] for i in range(8)])
    assert losses.shape == (8,) and torch.allclose(losses, alone, atol=1e-5)  # padding and batch-mates don't matter
    splits = Splits(forget=data.train.subset(np.arange(8)), retain=data.train, test=data.test, val=data.val)
    stats = task.example_statistics(model, splits, Runtime.from_config("cpu"))
    assert np.allclose(stats["forget"], -losses.detach().numpy(), atol=1e-5) and len(stats["test"]) == len(data.test)
    with pytest.raises(ConfigError, match="vocabulary"):
        task.fit(tiny_llama(100, hidden_size=32, intermediate_size=64, num_layers=1), data.train, None,
                 Runtime.from_config("cpu"), torch.Generator())


# ---- models --------------------------------------------------------------------------------------
def save_word_tokenizer(folder):
    """A small pretrained-format tokenizer built offline (word level over the facts' vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    words = {w for f in generate_facts(30, 7, 3, 0) for text in (f.question, f.answer, *f.perturbed, *REFUSALS)
             for w in text.replace(".", " . ").replace("?", " ? ").replace(",", " , ").split()}
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *sorted(words)])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(folder)
    return folder


def test_hf_causal_lm_loads_a_local_model_with_its_own_tokenizer(tmp_path):
    folder = save_word_tokenizer(tmp_path / "lm")
    torch.manual_seed(0)
    saved = tiny_llama(load_tokenizer(str(folder)).vocab_size, hidden_size=32, intermediate_size=64, num_layers=1)
    saved.save_pretrained(folder)
    cfg = compose_config("data=facts", "model=hf_causal_lm", f"model.name={folder}", "data.source.n_authors=3",
                         "data.source.facts_per_author=2")
    assert cfg.data.tokenizer == str(folder)  # the facts are tokenised with the model's own tokenizer
    model, data, task = build(cfg.model), build(cfg.data.source), build(cfg.data.task)
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in model.state_dict().items())
    batch = next(data.train.batches(4))
    assert task.loss(model, batch).shape == (4,) and torch.isfinite(task.loss(model, batch)).all()
    assert task.generate_answers(model, data.train.subset(np.arange(2)), Runtime.from_config("cpu"))


def test_hf_causal_lm_fails_clearly_when_the_model_cannot_be_loaded(tmp_path):
    with pytest.raises(ConfigError, match="cannot load the causal LM"):
        pretrained_causal_lm(str(tmp_path / "no-such-model"), local_files_only=True)
    with pytest.raises(ConfigError, match="model.name is empty"):
        pretrained_causal_lm("")


def test_llama_tiny_vocab_follows_the_data():
    cfg = compose_config("data=facts")
    assert cfg.model.vocab_size == ByteTokenizer.vocab_size and cfg.data.tokenizer == "bytes"


# ---- the shared methods through the real pipeline ------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
def test_shared_methods_forget_on_the_llm_task(run_experiment, method):
    row = run_experiment(*TINY_LLM, *ADAMW, *METHODS[method], tiny=False)
    original, oracle, metrics = row["reference"]["original"], row["reference"]["oracle"], row["metrics"]
    assert row["status"] == "ok" and METRICS <= set(metrics) and row["task"] == "llm"
    assert original["forget_prob"] > oracle["forget_prob"] + 0.1  # the original memorised what the oracle never saw
    assert oracle["forget_quality"] == 1.0
    # a no-op would leave the original's forget probability exactly where it was
    assert metrics["forget_prob"] < original["forget_prob"] - 0.05

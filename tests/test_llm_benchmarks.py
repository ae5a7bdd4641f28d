"""TOFU, MUSE and WMDP read from tiny files in their published layouts and run end to end through the real
pipeline with a tiny local model (saved with save_pretrained) as the original."""
import math

import numpy as np
import pytest

from llm_bench_files import AUTHORS_ROWS, save_tiny_lm, write_muse, write_tofu, write_wmdp
from unlearn.data.facts import load_tokenizer
from unlearn.data.llm_benchmarks import load_muse, load_tofu, load_wmdp, wmdp_prompt
from unlearn.errors import ConfigError, DataNotFoundError, UnsupportedTaskError
from unlearn.eval.llm import multiple_choice_accuracy, rouge_l_f1, rouge_l_recall
from unlearn.tasks.llm_benchmarks import MuseTask, knowmem_answer

FAST = ["device=cpu", "threads=1", "data.source.download=false", "data.train.epochs=30", "data.train.lr=1e-2",
        "data.train.batch_size=8", "data.task.eval_batch_size=16", "method=ga", "method.lr=3e-3", "method.epochs=3",
        "method.optimizer=adamw", "method.weight_decay=0", "method.batch_size=4"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    return {"lm": save_tiny_lm(root / "lm"), "tofu": write_tofu(root / "tofu"), "muse": write_muse(root / "muse"),
            "muse_old": write_muse(root / "muse_old", old_names=True), "wmdp": write_wmdp(root / "wmdp", "cyber")}


# ---- metrics on known answers --------------------------------------------------------------------
def test_rouge_l_f1_weighs_precision_and_recall():
    # "she was born" is the LCS: recall 3/6 of the reference, precision 3/5 of the prediction -> F1 = 6/11
    scores = rouge_l_f1(["she was born in Lima", "Lima is where she was born."], ["Lima is where she was born."] * 2)
    assert scores.tolist() == pytest.approx([6 / 11, 1.0])


def test_rouge_follows_each_benchmarks_stemming():
    """MUSE's scorer does not stem (F1 0.154 here); TOFU's ROUGE-L recall stems, as open-unlearning."""
    pred, ref = ["running dogs jumped over walls"], ["the dog runs and jumps over a wall"]
    assert rouge_l_f1(pred, ref).tolist() == pytest.approx([2 / 13])  # "over" alone: P 1/5, R 1/8
    assert rouge_l_f1(pred, ref, stem=True).tolist() == pytest.approx([8 / 13])
    assert rouge_l_recall(pred, ref).tolist() == pytest.approx([4 / 8])  # dog run jump over / 8 reference words


def test_knowmem_answer_is_cut_as_muse_cuts_it():
    assert knowmem_answer(" Paris\n\nQuestion: x") == " Paris"
    assert knowmem_answer("Paris\nQuestion: what") == "Paris"
    assert knowmem_answer("Paris Question: what\n\n") == "Paris "
    assert knowmem_answer("Paris\nand Lyon") == "Paris\nand Lyon"  # one line break is kept


def test_muse_prompts_and_references_follow_muse(files):
    data = load_muse("bytes", root=str(files["muse"]), download=False, max_length=512)
    task = MuseTask("bytes")
    prompt = task.tokenizer.decode([t for t in data.extra["knowmem_forget"]["prompt_ids"][0].tolist()
                                    if t not in (task.tokenizer.pad_id, task.tokenizer.bos_id)])
    assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer: ") and prompt.count("Question: ") == 3
    verbmem = data.extra["verbmem"]
    full = task.true_answers(verbmem)
    # VerbMem's reference is the true continuation cut to its first N tokens, BOS counted among them (MUSE)
    assert task.true_answers(verbmem, max_tokens=5) == [text[:5] for text in full]


def test_wmdp_prompt_is_lm_evaluation_harness_s():
    from unlearn.data.llm_benchmarks import WMDP_SUBJECTS

    assert WMDP_SUBJECTS["cyber"] == "cybersecurity" and WMDP_SUBJECTS["bio"] == "biology"
    assert wmdp_prompt("cybersecurity", "  What is X?\n", ["a", "b", "c", "d"]) == (
        "The following are multiple choice questions (with answers) about cybersecurity.\n\n"
        "What is X?\nA. a\nB. b\nC. c\nD. d\nAnswer:")


def test_multiple_choice_accuracy():
    scores = np.array([[-1.0, -2.0, -3.0, -4.0], [-5.0, -0.5, -1.0, -2.0], [-1.0, -1.0, -3.0, -0.1]])
    assert multiple_choice_accuracy(scores, np.array([0, 2, 3])) == pytest.approx(2 / 3)
    assert math.isnan(multiple_choice_accuracy(np.full((2, 4), np.nan), np.array([0, 1])))
    with pytest.raises(ValueError):
        multiple_choice_accuracy(scores, np.array([0, 4, 1]))


# ---- loaders on the real layouts -----------------------------------------------------------------
def test_tofu_loader_reads_the_json_lines_layout(files):
    data = load_tofu(str(files["lm"]), str(files["tofu"]), "forget10", download=False, authors_rows=AUTHORS_ROWS)
    tok = load_tokenizer(str(files["lm"]))
    start, stop = data.info["forget_rows"]
    assert stop == len(data.train) == 6 * AUTHORS_ROWS and stop - start == AUTHORS_ROWS  # forget = full's last rows
    assert set(data.extra) == {"forget", "retain", "real_authors", "world_facts"}
    assert data.extra["forget"]["perturbed_ids"].shape[1] == 5 and data.extra["world_facts"]["perturbed_ids"].shape[1] == 3
    row, labels = data.train["input_ids"][0].tolist(), data.train["labels"][0].tolist()
    first = next(i for i, t in enumerate(labels) if t != -100)
    prompt = tok._tok.decode(row[:first])
    assert "<|user|>" in prompt and prompt.rstrip().endswith("<|assistant|>") and "26 Jul 2024" in prompt  # chat template
    answer = [t for t in labels if t != -100]
    assert answer[-1] == tok.eos_id and tok._tok.decode(answer[:-1]).startswith(tok._tok.decode(row[first:first + 1]))
    assert tok.pad_id != tok.eos_id and row[len(answer) + first:] == [tok.pad_id] * (len(row) - len(answer) - first)


def test_muse_loader_accepts_old_and_new_split_names(files):
    new = load_muse(str(files["lm"]), root=str(files["muse"]), download=False, max_length=64)
    old = load_muse(str(files["lm"]), root=str(files["muse_old"]), download=False, max_length=64)
    for data in (new, old):
        assert set(data.extra) == {"verbmem", "knowmem_forget", "knowmem_retain", "privleak_forget"}
        start, stop = data.info["forget_rows"]
        assert start == 0 and (data.train["group"][:stop] == 1).all() and (data.train["group"][stop:] == 0).all()
    assert np.array_equal(new.train["input_ids"].numpy(), old.train["input_ids"].numpy())
    short = load_muse(str(files["lm"]), root=str(files["muse"]), download=False, max_length=8)
    assert len(short.train) > len(new.train) and short.train["input_ids"].shape[1] <= 8  # documents cut into chunks


def test_wmdp_loader_scores_four_choices(files):
    data = load_wmdp(str(files["lm"]), "cyber", root=str(files["wmdp"]), download=False)
    qa = data.extra["qa"]
    assert qa["choice_ids"].shape[:2] == (8, 4) and qa["answer"].tolist() == [0] * 4 + [3] * 4
    assert ((qa["choice_labels"] != -100).sum(-1) == 1).all()  # one scored token: the choice's letter


def test_missing_files_name_every_expected_file_and_where_to_put_them(files, tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_tofu(str(files["lm"]), str(tmp_path), "forget05", download=False)
    message = str(err.value)
    for name in ("forget05.json", "retain95.json", "holdout05.json", "forget05_perturbed.json", "retain_perturbed.json",
                 "real_authors_perturbed.json", "world_facts_perturbed.json", "data.root"):
        assert name in message
    with pytest.raises(DataNotFoundError, match=r"verbmem/forget-00000-of-00001\.parquet"):
        load_muse(str(files["lm"]), root=str(tmp_path), download=False)
    with pytest.raises(DataNotFoundError, match=r"wmdp-bio/test-00000-of-00001\.parquet"):
        load_wmdp(str(files["lm"]), "bio", root=str(tmp_path), download=False)


# ---- end to end ----------------------------------------------------------------------------------
def test_tofu_runs_end_to_end(run_experiment, files):
    row = run_experiment("data=tofu", f"data.root={files['tofu']}", f"model.name={files['lm']}",
                         f"data.source.authors_rows={AUTHORS_ROWS}", *FAST, tiny=False)
    metrics, original, oracle = row["metrics"], row["reference"]["original"], row["reference"]["oracle"]
    components = [f"{family}_{m}" for family in ("retain", "real_authors", "world_facts")
                  for m in ("prob", "rouge", "truth_ratio")]
    assert row["status"] == "ok" and set(components) <= set(metrics) and "forget_quality" in metrics
    assert oracle["forget_quality"] == 1.0 and row["forget"]["size"] == AUTHORS_ROWS
    assert original["forget_prob"] > oracle["forget_prob"]  # the original learnt the forget author
    assert metrics["forget_prob"] < original["forget_prob"] - 0.05  # gradient ascent unlearnt it


@pytest.mark.parametrize("corpus", ["muse", "muse_old"])
def test_muse_runs_end_to_end(run_experiment, files, corpus):
    row = run_experiment("data=muse_news", f"data.root={files[corpus]}", f"model.name={files['lm']}",
                         "data.source.max_length=32", "data.task.verbmem_new_tokens=8", *FAST, tiny=False)
    metrics, original = row["metrics"], row["reference"]["original"]
    assert row["status"] == "ok" and {"verbmem_f", "knowmem_f", "knowmem_r", "mia_min_k_auc", "privleak"} <= set(metrics)
    assert original["verbmem_f"] > 0.5 and metrics["verbmem_f"] < original["verbmem_f"]


def test_wmdp_runs_end_to_end(run_experiment, files):
    row = run_experiment("data=wmdp_cyber", f"data.root={files['wmdp']}", f"model.name={files['lm']}", *FAST,
                         tiny=False)
    metrics, original = row["metrics"], row["reference"]["original"]
    assert row["status"] == "ok" and 0 <= metrics["wmdp_accuracy"] <= 1
    assert metrics["forget_prob"] < original["forget_prob"]


@pytest.mark.parametrize("method", ["idkpo", "rl"])
def test_document_benchmarks_refuse_relabelling_methods_before_training(run_experiment, files, method, tmp_path):
    with pytest.raises(UnsupportedTaskError, match="documents"):
        run_experiment("data=muse_news", f"data.root={files['muse']}", f"model.name={files['lm']}", *FAST,
                       f"method={method}", tiny=False, cache_dir=tmp_path)
    assert not list(tmp_path.glob("original-*"))


def test_benchmarks_refuse_another_forget_request(run_experiment, files):
    with pytest.raises(ConfigError, match="forget=benchmark"):
        run_experiment("data=tofu", f"data.root={files['tofu']}", f"model.name={files['lm']}", "forget=random", *FAST,
                       tiny=False)



# ---- published originals and oracles (original.path, oracle.path) -------------------------------
@pytest.fixture(scope="module")
def published(files, tmp_path_factory):
    """An original (trained on TOFU's full set by a first run) and an oracle (trained on retain), as a
    benchmark publishes them: folders saved with save_pretrained, with their tokenizer."""
    import shutil

    root = tmp_path_factory.mktemp("published")
    out = {}
    for role, seed in (("original", 0), ("oracle", 1), ("other_arch", 2)):
        out[role] = save_tiny_lm(root / role, seed=seed, hidden_size=48 if role == "other_arch" else 32)
    out["other_tokenizer"] = save_tiny_lm(root / "other_tokenizer", seed=3, chat=False)
    shutil.copytree(out["original"], root / "copy")
    out["copy"] = root / "copy"
    return out


TOFU = lambda files: ["data=tofu", f"data.root={files['tofu']}", f"model.name={files['lm']}",  # noqa: E731
                      f"data.source.authors_rows={AUTHORS_ROWS}", *FAST]


def test_tofu_loads_the_published_original_and_oracle_instead_of_training(run_experiment, files, published, tmp_path):
    no_model_name = [a for a in TOFU(files) if not a.startswith("model.name=")]  # model.name follows original.path
    row = run_experiment(*no_model_name, f"original.path={published['original']}", f"oracle.path={published['oracle']}",
                         f"cache_dir={tmp_path / 'cache'}", tiny=False)
    original, oracle, metrics = row["reference"]["original"], row["reference"]["oracle"], row["metrics"]
    assert row["status"] == "ok" and row["timings"]["original_cached"] and row["timings"]["oracle_cached"]
    assert math.isnan(oracle["RTE_s"])  # nothing was trained
    assert not any(p.name.startswith(("original-", "oracle-")) for p in (tmp_path / "cache").rglob("*"))
    assert oracle["forget_quality"] == 1.0 and original["forget_quality"] < 1.0  # against the loaded oracle
    assert metrics["forget_prob"] < original["forget_prob"]  # the method ran on the loaded original
    # the same checkpoint gives the same numbers; the seed-1 oracle is not the seed-0 original
    from unlearn.config import build
    from unlearn.models.llm import causal_lm_from_checkpoint
    from unlearn.runtime import Runtime
    from unlearn.tasks.answers import ANSWER

    data = load_tofu(str(files["lm"]), str(files["tofu"]), download=False, authors_rows=AUTHORS_ROWS)
    task = build(__import__("conftest").compose_config(*TOFU(files)).data.task)
    start, stop = data.info["forget_rows"]
    nll = task.nll(causal_lm_from_checkpoint(str(published["original"])), data.train.subset(np.arange(start, stop)),
                   ANSWER, Runtime.from_config("cpu"))
    assert original["forget_prob"] == pytest.approx(float(np.mean(np.exp(-nll))), rel=1e-5)


@pytest.mark.parametrize("data", ["muse_books", "wmdp_bio"])
def test_muse_and_wmdp_run_on_published_original_and_oracle(run_experiment, files, published, tmp_path, data):
    root = files["muse"] if data.startswith("muse") else write_wmdp(tmp_path / "wmdp", "bio")
    row = run_experiment(f"data={data}", f"data.root={root}", f"model.name={files['lm']}", "data.source.max_length=32",
                         f"original.path={published['original']}", f"oracle.path={published['oracle']}", *FAST,
                         f"cache_dir={tmp_path / 'cache'}", tiny=False)
    original, oracle, metrics = row["reference"]["original"], row["reference"]["oracle"], row["metrics"]
    assert row["status"] == "ok" and row["timings"]["original_cached"] and math.isnan(oracle["RTE_s"])
    assert not any(p.name.startswith(("original-", "oracle-")) for p in (tmp_path / "cache").rglob("*"))
    if data.startswith("muse"):
        assert oracle["privleak"] == 0.0 and original["privleak"] != 0.0  # against the loaded oracle
        assert metrics["mia_min_k_auc"] != original["mia_min_k_auc"]  # the method moved the loaded original
    else:
        assert metrics["forget_prob"] < original["forget_prob"]


def test_published_checkpoints_are_keyed_by_identity(published, tmp_path):
    from unlearn.models.checkpoints import resolve

    a, b = resolve("original", str(published["original"])), resolve("original", str(published["copy"]))
    assert a.identity["files"] == b.identity["files"]  # same files, same hashes
    assert resolve("oracle", str(published["oracle"])).identity["files"] != a.identity["files"]


@pytest.mark.parametrize("bad,match", [("missing", "neither a file or folder"), ("other_arch", "weights do not match"),
                                       ("other_tokenizer", "tokenizer")])
def test_bad_published_models_are_refused_before_training(run_experiment, files, published, tmp_path, bad, match):
    oracle = tmp_path / "nothing-here" if bad == "missing" else published[bad]
    with pytest.raises(ConfigError, match=match):
        run_experiment(*TOFU(files), f"original.path={published['original']}", f"oracle.path={oracle}",
                       f"cache_dir={tmp_path / 'cache'}", tiny=False)
    assert not (tmp_path / "outputs").exists() and not list((tmp_path / "cache").rglob("original-*"))


def test_classifier_original_from_a_state_dict(run_experiment, tmp_path):
    import torch

    from conftest import compose_config
    from unlearn.config import build

    torch.manual_seed(0)
    model = build(compose_config("data=digits").model)
    torch.save(model.state_dict(), tmp_path / "original.pt")
    row = run_experiment(f"original.path={tmp_path / 'original.pt'}", "method=ga", "method.epochs=1")
    assert row["status"] == "ok" and row["timings"]["original_cached"]
    assert row["reference"]["original"]["TA"] < 30  # the untrained weights that were loaded, not a trained model
    with pytest.raises(ConfigError, match="trains its own original"):
        run_experiment(f"original.path={tmp_path / 'original.pt'}", "method=sisa")
    bad = {k: v[..., :1] if v.dim() else v for k, v in model.state_dict().items()}
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="does not fit the configured model"):
        run_experiment(f"original.path={tmp_path / 'bad.pt'}", "method=ga", "method.epochs=1")


# ---- LoRA and gradient checkpointing -------------------------------------------------------------
def _lora_unlearn(checkpointing: bool):
    """GA with LoRA rank 4 on a tiny Llama through GradientMethod.unlearn: (original, unlearned)."""
    import copy

    import torch

    from unlearn.data.facts import load_facts
    from unlearn.methods.ga import GradientAscent
    from unlearn.methods.base import UnlearnContext
    from unlearn.models.llm import tiny_llama
    from unlearn.runtime import Runtime
    from unlearn.tasks.llm import LanguageModelTask

    torch.manual_seed(0)
    original = tiny_llama(259, hidden_size=32, intermediate_size=64, num_layers=2)
    data = load_facts(n_authors=3, facts_per_author=2, val_authors=1, test_authors=1, world_facts=2)
    method = GradientAscent(lr=1e-2, epochs=2, batch_size=4, optimizer="adamw", weight_decay=0.0)
    method.check_model({"lora": {"_target_": "unlearn.models.lora.LoraSettings", "r": 4},
                        "gradient_checkpointing": checkpointing})
    runtime = Runtime.from_config("cpu")
    ctx = UnlearnContext(task=LanguageModelTask(), original=copy.deepcopy(original), forget=data.train.subset(np.arange(4)),
                         retain=data.train.subset(np.arange(4, 8)), runtime=runtime,
                         generator=torch.Generator().manual_seed(0), oracle=lambda: None, oracle_seconds=0.0)
    return original, method.unlearn(ctx)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_only_the_adapters(checkpointing, tmp_path):
    import torch

    original, unlearned = _lora_unlearn(checkpointing)
    assert unlearned.base_model.model.model.gradient_checkpointing == checkpointing  # the switch reached the model
    before = original.state_dict()
    changed_adapters = 0
    for name, value in unlearned.state_dict().items():
        if "lora_B" in name:  # B starts at zero: any change is training
            changed_adapters += int(value.abs().sum() > 0)
        elif "lora_" not in name:
            base = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(value, before[base]), f"{base} changed"  # every original weight is frozen
    assert changed_adapters > 0  # adapters trained, also under reentrant checkpointing (enable_input_require_grads)
    unlearned.save_pretrained(tmp_path / "adapter")
    saved = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert "adapter_config.json" in saved and "adapter_model.safetensors" in saved and "model.safetensors" not in saved


def test_the_checkpointing_trap_is_real():
    """What prepare_for_training guards against: reentrant checkpointing with the embedding output not requiring a
    gradient leaves the adapters without one; prepare_for_training restores the hook."""
    import torch

    from unlearn.models.llm import tiny_llama
    from unlearn.models.lora import LoraSettings, prepare_for_training

    def adapter_grads(model):
        model.train()
        ids = torch.randint(0, 259, (2, 8))
        model(input_ids=ids, labels=ids).loss.backward()
        return [p.grad for n, p in model.named_parameters() if "lora_B" in n]  # A gets none while B = 0

    torch.manual_seed(0)
    trapped = LoraSettings(r=4).wrap(tiny_llama(259, hidden_size=32, intermediate_size=64, num_layers=2))
    trapped.base_model.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    trapped.base_model.model.disable_input_require_grads()  # transformers and peft add the hook; without it:
    with pytest.raises(RuntimeError, match="does not require grad"):  # no gradient reaches any adapter
        adapter_grads(trapped)
    guarded = tiny_llama(259, hidden_size=32, intermediate_size=64, num_layers=2)
    guarded.disable_input_require_grads()
    guarded = prepare_for_training(guarded, LoraSettings(r=4), gradient_checkpointing=True)
    assert all(g is not None and g.abs().sum() > 0 for g in adapter_grads(guarded))


def test_lora_rank_must_be_positive_and_masks_or_rmu_refuse_it():
    from unlearn.methods.ga import GradientAscent
    from unlearn.methods.rmu import RMU
    from unlearn.models.lora import LoraSettings

    with pytest.raises(ConfigError, match="model.lora.r"):
        LoraSettings(r=0)
    lora = {"lora": {"r": 4}}
    with pytest.raises(ConfigError, match="mask"):
        GradientAscent(lr=1e-3, epochs=1, mask="saliency").check_model(lora)
    with pytest.raises(ConfigError, match="LoRA"):
        RMU(lr=1e-3, epochs=1, layer=0).check_model({**lora, "num_layers": 2})


def test_tofu_with_lora_saves_the_adapter(run_experiment, files, tmp_path):
    row = run_experiment(*TOFU(files), "model.lora.r=4", "method.lr=3e-2", tiny=False)
    assert row["status"] == "ok" and row["metrics"]["forget_prob"] < row["reference"]["original"]["forget_prob"]
    from pathlib import Path

    saved = {p.name for p in (Path(row["run_dir"]) / "model").iterdir()}
    assert "adapter_config.json" in saved and "model.safetensors" not in saved
    with pytest.raises(ConfigError, match=r"model.lora.r=-1"):
        run_experiment(*TOFU(files), "model.lora.r=-1", tiny=False)


def test_published_lm_loads_in_bfloat16_and_bad_dtype_is_refused(published):
    import torch

    from conftest import compose_config
    from unlearn.config import check_node
    from unlearn.models.llm import causal_lm_from_checkpoint

    model = causal_lm_from_checkpoint(str(published["original"]), {"dtype": "bfloat16"})
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with pytest.raises(ConfigError, match="model.dtype"):
        check_node(compose_config("data=facts", "model=hf_causal_lm", "model.name=x", "model.dtype=int8").model)


# ---- what a LoRA-unlearned model is measured and attacked as: the merged, deployable model ------------------
def test_gradnorm_does_not_depend_on_the_parametrisation():
    """GradNorm differentiates every weight of the deployed model: a fresh adapter (the same function) and a
    trained one scored as the peft model give the numbers of the merged model."""
    import copy

    import torch

    from unlearn.data.facts import load_facts
    from unlearn.models.lora import LoraSettings, deployed
    from unlearn.runtime import Runtime
    from unlearn.tasks.llm import LanguageModelTask

    original, unlearned = _lora_unlearn(False)
    task, runtime = LanguageModelTask(), Runtime.from_config("cpu")
    data = load_facts(n_authors=3, facts_per_author=2, val_authors=1, test_authors=1, world_facts=2).train.subset(np.arange(4))
    plain = task.gradient_norms(original, data, runtime)
    fresh = task.gradient_norms(LoraSettings(r=4).wrap(copy.deepcopy(original)), data, runtime)
    assert fresh == pytest.approx(plain, rel=1e-4)
    merged = copy.deepcopy(unlearned).merge_and_unload()
    assert task.gradient_norms(unlearned, data, runtime) == pytest.approx(task.gradient_norms(merged, data, runtime),
                                                                          rel=1e-4)
    assert all(p.requires_grad for n, p in unlearned.named_parameters() if "lora_" in n)  # flags given back
    assert not any(p.requires_grad for n, p in unlearned.named_parameters() if "lora_" not in n)
    assert deployed(original) is original and not hasattr(deployed(unlearned), "peft_config")


def test_relearning_attacks_the_merged_model_not_the_adapters(files, tmp_path):
    """attack=relearn on a LoRA-unlearned model trains every weight of the merged model: the attacked metrics
    equal those of the same function unwrapped."""
    import copy

    from conftest import compose_config
    from unlearn.pipeline import Experiment

    cfg = compose_config(*TOFU(files), "model.lora.r=4", "method.lr=3e-2", "attack=relearn", "attack.steps=3",
                         "attack.lr=1e-2", f"cache_dir={tmp_path / 'cache'}", f"table_path={tmp_path / 't.jsonl'}")
    exp = Experiment(cfg)
    art = exp.prepare()
    splits = exp.splits()
    unlearned, status, _ = exp.stage.unlearn(art, splits)
    assert status == "ok" and hasattr(unlearned, "peft_config")
    names = ["forget_prob", "retain_prob"]
    as_peft = exp.evaluator.attacked(unlearned, None, art, splits, names)
    unwrapped = exp.evaluator.attacked(copy.deepcopy(unlearned).merge_and_unload().requires_grad_(True), None, art, splits, names)
    assert as_peft["relearn.forget_prob"] == pytest.approx(unwrapped["relearn.forget_prob"], rel=1e-4)
    assert as_peft["relearn.forget_prob"] > exp.evaluator.evaluate(unlearned, art.oracle, splits)["forget_prob"]


def test_a_lora_stream_keeps_one_adapter_that_loads_onto_the_original(tmp_path, shared_cache):
    """LoRA across the steps of a stream trains the same adapter: the saved final adapter loads onto the
    original and scores the last step's metrics."""
    from peft import PeftModel

    from conftest import compose_config
    from test_llm import TINY_LLM
    from unlearn.config import build
    from unlearn.pipeline import Experiment
    from unlearn.report.compare import load_rows

    table = tmp_path / "table.jsonl"
    cfg = compose_config(*TINY_LLM, f"cache_dir={shared_cache}", "scenario=sequence", "scenario.steps=2",
                         "method=ga", "method.lr=2e-3", "method.epochs=2", "model.lora.r=4", "save_model=true",
                         f"table_path={table}")
    exp = Experiment(cfg)
    build(cfg.scenario).run(exp, run_dir=tmp_path / "run")
    rows = load_rows(table)
    adapter = json_of(tmp_path / "run" / "model" / "adapter_config.json")
    assert "lm_head" not in str(adapter["target_modules"])
    original = exp.models.original_model(exp.seed)[0]
    loaded = PeftModel.from_pretrained(original, tmp_path / "run" / "model")
    assert not any("base_layer.lora" in n or ".base_layer.base_layer" in n for n, _ in loaded.named_parameters())
    last = rows[-1]
    from unlearn.pipeline.store import seed_stage
    from unlearn.scenarios.sequence import Sequence

    data = exp.data()[0]
    request = Sequence(steps=2).requests(exp)[-1]
    splits = Sequence._splits(data, request, exp.request.forget)
    seed_stage(exp.seed, "evaluate")
    metrics = exp.task.evaluate(loaded, splits, exp.runtime, int(cfg.eval.seed))
    assert metrics["forget_prob"] == pytest.approx(last["metrics"]["forget_prob"], rel=1e-4)


def json_of(path):
    import json

    return json.loads(path.read_text())


def test_a_population_of_one_published_model_is_refused(files, published, tmp_path):
    """eval.oracles=N with original.path / oracle.path would make KLoM, LiRA and ε compare copies of one model."""
    from conftest import compose_config
    from unlearn.pipeline import Experiment

    no_model_name = [a for a in TOFU(files) if not a.startswith("model.name=")]
    for paths in ([f"original.path={published['original']}", f"oracle.path={published['oracle']}"],
                  [f"model.name={files['lm']}", f"oracle.path={published['oracle']}"]):
        with pytest.raises(ConfigError, match=r"eval\.oracles=3 .* copies of one model; use eval\.oracles=1"):
            Experiment(compose_config(*no_model_name, *paths, "eval.oracles=3", f"cache_dir={tmp_path}"))

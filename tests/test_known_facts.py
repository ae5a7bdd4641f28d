"""data=known_facts on small files: the answer check on known answers, the facts file, the filter of facts a model
knows (a tiny byte-level Llama taught some of them), and the protocol end to end without an oracle."""
import json
import math

import pytest
import torch

from unlearn.data.facts import ByteTokenizer
from unlearn.data.known_facts import (answer_matches, encode_facts, first_entities, known_mask, load_known_facts,
                                      normalised_words, read_facts)
from unlearn.errors import BadInputError, ConfigError, DataNotFoundError
from unlearn.models.llm import tiny_llama
from unlearn.tasks.llm import LanguageModelTask

RELATIONS = {"capital": {"question": "Capital of {entity}?", "answer": "The capital of {entity} is {value}."},
             "country": {"question": "Country of {entity}?", "answer": "{entity} is in {value}."}}
# Countries A..F in two regions, a place in each region, and one general fact.
ENTITIES = [{"name": n, "kind": "country", "cluster": "north" if i < 3 else "south", "facts": {"capital": [c, c + "x"]}}
            for i, (n, c) in enumerate([("Avia", "Obo"), ("Bera", "Pim"), ("Cora", "Quo"), ("Dura", "Rek"),
                                        ("Elba", "Sul"), ("Fama", "Tov")])]
ENTITIES += [{"name": "the Arch", "kind": "place", "cluster": "north", "facts": {"country": ["Avia"]}},
             {"name": "the Dam", "kind": "place", "cluster": "south", "facts": {"country": ["Dura"]}},
             {"name": "water", "kind": "general", "cluster": "science",
              "questions": [{"question": "Formula of water?", "answer": "Water is {value}.", "accept": ["H2O"]}]}]
# What the tiny model is taught: every fact but these two, which it never sees (its unknown facts).
UNTAUGHT = {"Capital of Fama?", "Country of the Dam?"}


def write_facts(path, entities=ENTITIES, relations=RELATIONS):
    path.write_text(json.dumps({"relations": relations, "entities": entities}))
    return path


# ---- the answer check on known answers ----------------------------------------------------------------
def test_answer_matches_whole_words_and_aliases():
    assert answer_matches("The capital of Kenya is Nairobi.", ["Nairobi"])
    assert answer_matches("It is BOGOTA, of course", ["Bogotá"])  # case and accents
    assert answer_matches("Washington, D. C. is the capital", ["Washington, D.C."])  # punctuation splits words
    assert answer_matches("The yen.", ["Japanese yen", "yen"])  # an alias
    assert not answer_matches("The capital of Kenya is Nairobbi.", ["Nairobi"])
    assert not answer_matches("Parisian style", ["Paris"])  # part of a word
    assert not answer_matches("The Japanese currency", ["Japanese yen"])  # every word of the value, in order
    assert not answer_matches("", ["Paris"])
    assert normalised_words("Saint-Exupéry's Prince!") == ["saint", "exupery", "s", "prince"]


# ---- the facts file -----------------------------------------------------------------------------------
def test_read_facts_writes_questions_and_answers_from_the_templates(tmp_path):
    facts = read_facts(write_facts(tmp_path / "f.json"))
    assert len(facts) == 9 and facts[0].question == "Capital of Avia?"
    assert facts[0].answer == "The capital of Avia is Obo." and facts[0].accept == ("Obo", "Obox")
    place = next(f for f in facts if f.entity == "the Arch")
    assert place.answer == "The Arch is in Avia." and place.cluster == "north"  # the sentence opens capitalised
    assert facts[-1].answer == "Water is H2O." and facts[-1].kind == "general"
    assert [f.entity for f in first_entities(facts, 1)] == ["Avia", "the Arch", "water"]


def test_the_packaged_facts_are_hundreds_and_none_answers_itself():
    facts = read_facts()  # the checks of read_facts pass on the shipped file
    kinds = {f.kind for f in facts}
    assert len(facts) >= 400 and {"country", "place", "book", "painting", "element", "general"} <= kinds
    assert len({f.question for f in facts}) == len(facts)


@pytest.mark.parametrize("bad, message", [
    ([{"name": "Avia", "kind": "country", "cluster": "n", "facts": {"anthem": ["X"]}}], "not one of the file's"),
    ([{"name": "Obo", "kind": "country", "cluster": "n", "facts": {"capital": ["Obo"]}}], "contains its own answer"),
    ([{"name": "Avia", "kind": "country", "cluster": "n", "facts": {"capital": []}}], "no accepted answer"),
])
def test_bad_facts_files_are_refused_in_one_line(tmp_path, bad, message):
    with pytest.raises(ConfigError, match=message):
        read_facts(write_facts(tmp_path / "bad.json", bad))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataNotFoundError, match="cannot read the known facts"):
        read_facts(tmp_path / "broken.json")


# ---- the filter with a model that knows some of the facts -----------------------------------------------
@pytest.fixture(scope="module")
def taught(tmp_path_factory):
    """(facts file, folder of a tiny byte-level Llama that answers every fact but UNTAUGHT)."""
    root = tmp_path_factory.mktemp("known")
    path = write_facts(root / "facts.json")
    facts = read_facts(path)
    data = encode_facts(ByteTokenizer(), [f for f in facts if f.question not in UNTAUGHT], 96)
    batch = {name: data[name] for name in ("input_ids", "attention_mask", "labels")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is fastest on a busy CPU
    torch.manual_seed(0)
    model = tiny_llama(ByteTokenizer.vocab_size, hidden_size=64, num_layers=2, intermediate_size=128)
    task = LanguageModelTask("bytes")
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):  # memorises the 7 answers (loss < 0.01)
        loss = task.loss(model, batch).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    torch.set_num_threads(threads)
    model.save_pretrained(root / "lm")
    return path, root / "lm"


def test_the_filter_keeps_the_facts_the_model_answers_and_caches_them(taught, tmp_path, monkeypatch):
    path, folder = taught
    facts = read_facts(path)
    cache = str(tmp_path / "cache")
    mask = known_mask(str(folder), None, "bytes", facts, 40, 8, "cpu", cache)
    assert {f.question for f, k in zip(facts, mask) if not k} == UNTAUGHT
    # Cached under the model's identity: a second call loads no model.
    monkeypatch.setattr("unlearn.models.llm.pretrained_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    assert (known_mask(str(folder), None, "bytes", facts, 40, 8, "cpu", cache) == mask).all()


def test_the_known_world_splits_known_from_unknown_facts(taught, tmp_path):
    path, folder = taught
    data = load_known_facts("bytes", str(folder), path=str(path), max_new_tokens=40, min_known=5, min_entities=2,
                            min_unknown=2, eval_batch_size=8, device="cpu", cache_dir=str(tmp_path))
    assert len(data.train) == 7 and len(data.test) == 2 and len(data.val) == 0
    groups = data.train["group"].tolist()
    # The northern countries are forgettable (ids >= 0): the Arch, a known place, anchors their region. The southern
    # ones are not (the Dam is unknown, so no kept fact of their region would be a neighbour), nor places or water.
    assert sorted(g for g in groups if g >= 0) == [0, 1, 2] and sum(g < 0 for g in groups) == 4
    assert data.info["entities"]["forgettable"] == ["Avia", "Bera", "Cora"]
    accept = data.info["accept"]
    assert all(answer_matches(ByteTokenizer().decode(row[row != -100][:-1].tolist()), accept[i])
               for row, i in zip(data.train["labels"], data.train["fact_id"].tolist()))
    with pytest.raises(ConfigError, match="answers 7 of 9 candidate facts correctly.*data.source.min_known=8"):
        load_known_facts("bytes", str(folder), path=str(path), max_new_tokens=40, min_known=8, min_entities=2,
                         min_unknown=2, eval_batch_size=8, device="cpu", cache_dir=str(tmp_path))


def test_known_facts_runs_end_to_end_against_the_base_model(run_experiment, taught, tmp_path):
    path, folder = taught
    row = run_experiment("data=known_facts", "model=hf_causal_lm", f"model.name={folder}", "data.tokenizer=bytes",
                         f"data.source.path={path}", "data.source.min_known=5", "data.source.min_entities=2",
                         "data.source.min_unknown=2", "data.task.max_new_tokens=40", "data.task.eval_batch_size=8",
                         "forget.ratio=null", "forget.count=1", "method=ga", "method.lr=1e-3", "method.epochs=3",
                         "method.batch_size=2", "method.optimizer=adamw", "device=cpu", "threads=1",
                         cache_dir=tmp_path / "cache", tiny=False)
    m, base = row["metrics"], row["reference"]["original"]
    assert row["status"] == "ok" and base["forget_acc"] == 1.0 and base["utility_acc"] == 1.0
    assert base["mia_loss_auc"] == 1.0  # the base model knows its forget facts better than the unknown ones
    assert row["reference"]["oracle"]["forget_acc"] == 1.0  # the oracle column is the base model too
    assert m["forget_prob"] < base["forget_prob"]
    assert {"forget_quality", "privleak", "mia_reference_auc"}.isdisjoint(m)  # no oracle-relative metrics
    assert {"neighbour_acc", "utility_prob", "forget_fluency_ppl", "mia_min_k_pp_auc"} <= set(m)
    assert "mia_gradnorm_auc" not in m  # by default: it costs a backward pass per fact (data.task.mia adds it)
    assert row["gap"] == {} and math.isnan(row["avg_gap"])  # no oracle: a distance from the base is no Avg. Gap


def test_the_membership_attacks_are_named_from_the_family():
    from unlearn.tasks.known_facts import KnownFactsTask

    assert KnownFactsTask(mia=["min_k", "loss"]).mia == ("loss", "min_k")
    with pytest.raises(ConfigError, match="name at least one of loss, zlib, min_k, min_k_pp, gradnorm .lira is not one"):
        KnownFactsTask(mia=["loss", "lira"])


def test_a_model_that_knows_too_little_is_refused_before_training(run_experiment, taught, tmp_path):
    path, folder = taught
    with pytest.raises(BadInputError, match="min_known=100"):
        run_experiment("data=known_facts", "model=hf_causal_lm", f"model.name={folder}", "data.tokenizer=bytes",
                       f"data.source.path={path}", "data.source.min_known=100", "data.task.max_new_tokens=40",
                       "method=ga", cache_dir=tmp_path / "cache", tiny=False)
    assert not any("original" in p.name for p in (tmp_path / "cache").rglob("*"))

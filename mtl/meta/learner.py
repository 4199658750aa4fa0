"""Rapid adaptation from Python: load a meta-trained learner, adapt it, predict.

    from mtl.runs.meta import load_learner

    learner = load_learner("/tmp/omniglot_maml")        # a workdir of launch.train
    adapted = learner.adapt(support_images, support_labels, steps=10)
    labels = adapted.predict(query_images)              # in the support set's own labels

Inputs are in the data set's own form and go through the preprocessing used in training:
Omniglot images as read from the PNG files (105x105, bool or uint8, white background) are
resized to the training size and inverted; sinusoid inputs are x values. Labels can be any
integers (or strings); the number of distinct labels is the number of ways.

Any number of ways works when the head is built per episode: ProtoNets, or MAML-family
learners trained with `meta.head_init="zero"` or `"proto"`. A head meta-learned for N ways
(`head_init="learned"`) cannot classify M != N classes, and `adapt` says so.

Batch norm follows `meta.bn_test` of the training config: with "batch" (MAML's choice) each
forward pass normalises with its own batch, so `predict` on a whole query set is what was
evaluated; predictions of single examples then differ. With "running" each example is
predicted on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mtl.errors import ConfigError, DataError
from mtl.meta.protocol import MetaLearner

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Learner:
    """A meta-trained learner: its meta-parameters, BN state and how to adapt them."""

    config: ml_collections.ConfigDict
    method: MetaLearner  # built by mtl.meta.methods.build
    meta: PyTree
    model_state: PyTree
    kind: str
    preprocess: Callable[[np.ndarray], np.ndarray]
    step: int

    @property
    def trained_ways(self) -> int:
        return int(self.config.meta.ways)

    def inputs(self, raw) -> PyTree:
        """Model inputs from raw ones: images or x values as arrays, text as a list of
        sentences (tokenised here; empty ones raise, over-long ones are cut with a warning)."""
        if isinstance(raw, list | tuple) and raw and isinstance(raw[0], str):
            raw = list(raw)  # sentences stay strings for the tokenizer
        else:
            raw = np.asarray(raw)
        return jax.tree.map(jnp.asarray, self.preprocess(raw))

    def adapt(self, support_x, support_y, steps: int | None = None) -> AdaptedLearner:
        """Adapts to a support set; `steps` defaults to the config's `eval.inner_steps`."""
        x = _trimmed(self.inputs(support_x)) if _is_text(support_x) else self.inputs(support_x)
        y_raw = np.asarray(support_y)
        if len(y_raw) != _count(x):
            raise DataError(
                f"{_count(x)} support inputs but {len(y_raw)} labels; give one label each."
            )
        if self.kind == "classification":
            classes, y = np.unique(y_raw, return_inverse=True)
            y = jnp.asarray(y.reshape(-1).astype(np.int32))
            self._check_ways(len(classes))
        else:
            classes, y = None, jnp.asarray(y_raw, jnp.float32).reshape(_count(x), -1)
        ways = 1 if classes is None else len(classes)
        steps = int(self.config.eval.inner_steps if steps is None else steps)
        if steps < self.method.min_adapt_steps:
            raise ConfigError(
                f"adapt needs steps >= {self.method.min_adapt_steps} for "
                f"{self.config.meta.method}, got {steps}."
            )
        adapted = _adapt_jit(self.method, ways, steps, self._train_bn)(
            self.meta, self.model_state, {"x": x, "y": y}
        )
        return AdaptedLearner(self, adapted, ways, steps, classes)

    @property
    def _train_bn(self) -> bool:
        return self.method.bn_test == "batch"

    def _check_ways(self, ways: int) -> None:
        if ways < 2:
            raise DataError(
                f"A classification support set needs at least 2 classes, got {ways}: add "
                "examples of another class."
            )
        if self.method.head_per_episode or ways == self.trained_ways:
            return
        raise ConfigError(
            f"This learner's head was meta-learned for {self.trained_ways} ways "
            f"(meta.head_init='learned'), so it cannot classify {ways} classes: its "
            f"{self.trained_ways} outputs have no meaning beyond the episodes it was trained "
            f"on. Give {self.trained_ways} classes, or use a learner whose head is built per "
            "episode: train with --config.meta.head_init=zero or proto, or ProtoNets."
        )


@dataclasses.dataclass(frozen=True)
class AdaptedLearner:
    """A learner adapted to one support set."""

    learner: Learner
    adapted: PyTree  # what the method's `predict` needs (MAML: weights; ProtoNets: support set)
    ways: int
    steps: int
    classes: np.ndarray | None  # the support set's labels, index = output index

    def outputs(self, query_x) -> np.ndarray:
        """Logits [n, ways] (classification) or predictions [n, 1] (regression).

        Sentences are predicted in chunks of `TEXT_CHUNK`, sorted by length and each cut to its
        longest sentence (the trunks have no batch statistics, so chunking changes nothing but
        the time; padding to `max_length` would cost up to `max_length / length` times more).
        Other inputs go through in one batch (batch norm with `bn_test="batch"` sees them all).
        """
        lr = self.learner
        predict = _predict_jit(lr.method, self.ways, self.steps, lr._train_bn)
        if not _is_text(query_x):
            return np.asarray(predict(lr.meta, lr.model_state, self.adapted, lr.inputs(query_x)))
        tokens = {k: np.asarray(v) for k, v in lr.inputs(query_x).items()}
        order = np.argsort(tokens["attention_mask"].sum(axis=1), kind="stable")
        chunk = min(TEXT_CHUNK, len(order))
        out = [None] * len(order)
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            # The last chunk repeats rows to the chunk's size: one compiled shape per width.
            padded = np.resize(rows, chunk)
            x = _trimmed({k: v[padded] for k, v in tokens.items()})
            logits = np.asarray(predict(lr.meta, lr.model_state, self.adapted, x))
            for i, row in enumerate(rows):
                out[row] = logits[i]
        return np.stack(out)

    def predict(self, query_x) -> np.ndarray:
        """Labels (in the support set's labels) or regression values [n, 1]."""
        out = self.outputs(query_x)
        if self.classes is None:
            return out
        return self.classes[np.argmax(out, axis=-1)]

    def evaluate(self, query_x, query_y) -> float:
        """Accuracy on labelled queries (classification); a query label the support set did
        not have is a `DataError` (no prediction can match it)."""
        if self.classes is None:
            raise ConfigError("evaluate scores classification; use predict for regression.")
        labels = np.asarray(query_y)
        unknown = sorted(set(labels.tolist()) - set(self.classes.tolist()), key=str)
        if unknown:
            raise DataError(
                f"Query label {unknown[0]!r} is not among the support set's labels "
                f"{self.classes.tolist()}: every query class needs support examples."
            )
        return float(np.mean(self.predict(query_x) == labels))


TEXT_CHUNK = 256  # sentences per compiled prediction call


def _is_text(raw) -> bool:
    return isinstance(raw, list | tuple) and bool(raw) and isinstance(raw[0], str)


def _trimmed(tokens: PyTree) -> PyTree:
    from mtl.data import text

    tokens = {k: np.asarray(v) for k, v in tokens.items()}
    return jax.tree.map(jnp.asarray, text.trim_padding(tokens, 16, keep_pad_column=True))


def _count(x: PyTree) -> int:
    return int(jax.tree.leaves(x)[0].shape[0])


_CACHE: dict = {}


def _cached(key, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _adapt_jit(method: MetaLearner, ways: int, steps: int, train_bn: bool):
    def adapt(meta, state, support):
        adapted, _ = method.adapt(meta, state, support, ways=ways, steps=steps, train_bn=train_bn)
        return adapted

    return _cached(("adapt", id(method), ways, steps, train_bn), lambda: jax.jit(adapt))


def _predict_jit(method: MetaLearner, ways: int, steps: int, train_bn: bool):
    def predict(meta, state, adapted, x):
        return method.predict(meta, state, adapted, x, ways=ways, steps=steps, train_bn=train_bn)

    return _cached(("predict", id(method), ways, steps, train_bn), lambda: jax.jit(predict))

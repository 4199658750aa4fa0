"""Meta-learning methods and episode families by name: kinds, defaults, the learner protocol."""

import pytest

from configs import meta_common, omniglot_protonets
from mtl.errors import ConfigError
from mtl.meta import families, maml, methods
from mtl.meta import model as mm
from mtl.meta.protocol import MetaLearner, MethodOptions
from mtl.models import default_config


def test_family_kind_is_declared_where_registered_and_loads_no_data():
    assert families.kind({"name": "sinusoid"}) == "regression"
    assert families.kind({"name": "omniglot", "image_size": 14}) == "classification"
    kind, shape, _ = families.describe({"name": "omniglot", "image_size": 14})
    assert (kind, shape) == ("classification", (14, 14, 1))
    assert families.describe({"name": "omniglot"})[1] == (28, 28, 1)  # the factory's default
    with pytest.raises(ConfigError, match="Did you mean 'omniglot'"):
        families.kind({"name": "omniglott"})


def test_each_method_declares_its_defaults_once():
    assert methods.defaults("protonets") == {"bn_test": "running"}
    assert methods.defaults("maml")["bn_test"] == "batch"
    assert methods.defaults("reptile") == methods.defaults("maml")
    block = meta_common.meta_block()
    assert {k: block[k] for k in methods.defaults("maml")} == methods.defaults("maml")
    assert omniglot_protonets.get_config().meta.bn_test == "running"
    # Without the field in the block, each method falls back to its own default.
    assert methods.options({"method": "protonets"}).bn_test == "running"
    assert methods.options({"method": "maml"}).bn_test == "batch"


def test_options_come_from_the_block_and_are_typed():
    opts = methods.options({"method": "maml", "ways": 5, "inner_lr": 1, "adapt": "head"})
    assert opts == maml.MamlOptions(inner_lr=1.0, adapt="head")
    with pytest.raises(ConfigError, match=r"meta.first_order must be a bool"):
        methods.options({"method": "maml", "first_order": "yes"})
    with pytest.raises(ConfigError, match=r"Unknown meta-learning method 'mamll'"):
        methods.options({"method": "mamll"})


@pytest.mark.parametrize(
    "meta, per_episode, outputs",
    [
        (dict(method="maml"), False, 5),
        (dict(method="maml", head_init="zero"), True, 5),
        (dict(method="reptile"), False, 5),
        (dict(method="protonets"), True, None),
        (dict(method="imaml"), False, 5),
        (dict(method="imaml", head_init="zero"), True, 5),
        (dict(method="r2d2"), True, None),
        (dict(method="maml", adapt="body"), False, 5),
    ],
)
def test_every_method_implements_the_learner_protocol(meta, per_episode, outputs):
    meta = dict(ways=5) | meta
    options = methods.options(meta)
    assert isinstance(options, MethodOptions)
    assert methods.head_per_episode(meta) is per_episode
    assert methods.num_outputs(meta, "classification") == outputs
    config = default_config()
    config.conv4.update(filters=4, conv="matmul")
    model, params, state = mm.build(config, "classification", outputs, (8, 8, 1), seed=0)
    learner = methods.build(meta, model, params, state)
    assert isinstance(learner, MetaLearner)
    assert learner.head_per_episode is per_episode
    assert learner.bn_test == options.bn_test
    assert learner.min_adapt_steps == (0 if meta["method"] in ("protonets", "r2d2") else 1)

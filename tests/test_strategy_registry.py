"""Fine-tuning strategies by name: options and defaults from each strategy's dataclass."""

import pytest

from mtl.errors import ConfigError
from mtl.transfer import lora, strategies


def test_default_config_holds_each_strategys_own_defaults():
    assert strategies.default_config().to_dict() == dict(
        strategy="full",
        head_lr_mult=1.0,
        freeze=(),
        llrd=dict(decay=0.8),
        gradual_unfreezing=dict(every=100),
        lp_ft=dict(probe_steps=100, trunk_lr_mult=1.0),
        lora=dict(rank=8, alpha=16.0, targets=lora.DEFAULT_TARGETS),
        prompt_tuning=dict(length=20, init="vocab"),
    )
    assert set(strategies.STRATEGIES) == {
        "feature_extraction",
        "full",
        "llrd",
        "gradual_unfreezing",
        "lp_ft",
        "lora",
        "prompt_tuning",
    }


def test_options_are_checked_by_name_and_type():
    config = strategies.default_config()
    config.strategy = "llrd"
    config.llrd.decay = 0.5
    assert strategies.strategy(config) == strategies.LayerwiseLrDecay(decay=0.5)
    bad = config.to_dict() | {"llrd": {"decay": 0.5, "decy": 1}}
    with pytest.raises(ConfigError, match=r"no option\(s\) 'decy'.*finetune.llrd"):
        strategies.check(bad, num_steps=10)


def test_plan_puts_heads_and_freeze_rules_first():
    config = strategies.default_config().to_dict() | {"freeze": ("^trunk/embeddings/",)}
    params = {"trunk": {"layers": [{}, {}]}, "heads": {}}
    plan = strategies.plan(config | {"strategy": "gradual_unfreezing"}, params)
    assert plan.rules[:2] == [("^trunk/embeddings/", "frozen"), ("^heads/", "heads")]
    starts = {name: g.start for name, g in plan.groups.items()}
    assert starts == {
        "frozen": 0,
        "heads": 0,
        "pooler": 100,
        "embeddings": 300,
        "layer_0": 200,
        "layer_1": 100,
    }
    assert strategies.plan(config | {"strategy": "feature_extraction"}, params).rules[-1] == (
        "",
        "frozen",
    )

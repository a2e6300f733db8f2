import math

import pytest

from mrff_secure.dp.config import DPConfig, default_delta, min_survivors
from mrff_secure.errors import ConfigError


def test_defaults_are_off():
    cfg = DPConfig()
    assert not cfg.enabled
    assert cfg.mechanism_name == "none"


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(mode="central", noise_multiplier=1.0), "'central'"),
        (dict(mode="local", clip=0.0, noise_multiplier=1.0), "0.0"),
        (dict(mode="local", clip=-1.0, noise_multiplier=1.0), "-1.0"),
        (dict(mode="local", clip=float("nan"), noise_multiplier=1.0), "nan"),
        (dict(mode="local", noise_multiplier=-0.1), "-0.1"),
        (dict(mode="local"), "exactly one"),
        (dict(mode="local", noise_multiplier=1.0, target_epsilon=2.0), "exactly one"),
        (dict(mode="local", target_epsilon=0.0), "0.0"),
        (dict(mode="local", noise_multiplier=1.0, delta=1.0), "1.0"),
        (dict(mode="local", noise_multiplier=1.0, max_dropout_fraction=0.1), "0.1"),
        (dict(mode="distributed", noise_multiplier=1.0, max_dropout_fraction=1.0), "1.0"),
        (dict(mode="distributed", noise_multiplier=1.0, mechanism="gaussian"), "'gaussian'"),
        (dict(mode="local", noise_multiplier=1.0, mechanism="skellam"), "'skellam'"),
        (dict(mode="off", noise_multiplier=0.5), "0.5"),
        (dict(mode="off", target_epsilon=3.0), "3.0"),
        (dict(mode="local", noise_multiplier="1"), "'1'"),
    ],
)
def test_invalid_values_are_named(kwargs, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        DPConfig(**kwargs)
    assert fragment in str(info.value)


def test_frozen_and_round_trip():
    cfg = DPConfig(mode="distributed", clip=0.5, noise_multiplier=0.3, mechanism="skellam", max_dropout_fraction=0.2)
    with pytest.raises(Exception):
        cfg.clip = 2.0  # type: ignore[misc]
    assert DPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="bogus"):
        DPConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_delta_default_is_one_over_n_to_the_1_1():
    cfg = DPConfig(mode="local", noise_multiplier=1.0)
    assert cfg.resolve_delta(1791) == pytest.approx(1791**-1.1)
    assert DPConfig(mode="local", noise_multiplier=1.0, delta=1e-6).resolve_delta(1791) == 1e-6
    assert default_delta(1000) < 1 / 1000
    with pytest.raises(ConfigError):
        default_delta(1)


def test_min_survivors():
    assert min_survivors(10, 0.0) == 10
    assert min_survivors(10, 0.3) == 7
    assert min_survivors(10, 0.25) == 8
    assert min_survivors(3, 0.9) == 1
    cfg = DPConfig(mode="distributed", noise_multiplier=1.0, max_dropout_fraction=0.5)
    assert cfg.min_survivors(101) == math.ceil(50.5)

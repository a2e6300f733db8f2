"""The argument checks: what each accepts, what it refuses (bools, NaN, infinities, wrong types), and an
error that names the argument and the value."""

import math

import pytest

from mrff_secure.checks import check_bool, check_choice, check_int, check_number
from mrff_secure.errors import ConfigError, PrivacyError, SecAggError


@pytest.mark.parametrize(
    "value, bounds",
    [
        (0, {}),
        (-5, {}),
        (2, {"low": 2}),
        (7, {"high": 7}),
        (3, {"low": 2, "high": 4}),
        (2**64 - 1, {"low": 0, "high": 2**64 - 1}),
    ],
)
def test_check_int_accepts_ints_within_bounds(value, bounds):
    assert check_int("n", value, **bounds) == value


@pytest.mark.parametrize(
    "value, bounds, message",
    [
        (1, {"low": 2}, "min_group_size must be an int >= 2, got 1"),
        (9, {"high": 8}, "min_group_size must be an int <= 8, got 9"),
        (256, {"low": 0, "high": 255}, "min_group_size must be an int in [0, 255], got 256"),
        (True, {}, "min_group_size must be an int, got True"),
        (False, {"low": 0}, "min_group_size must be an int >= 0, got False"),
        (2.0, {}, "min_group_size must be an int, got 2.0"),
        ("3", {}, "min_group_size must be an int, got '3'"),
        (None, {}, "min_group_size must be an int, got None"),
    ],
)
def test_check_int_refuses_naming_the_argument(value, bounds, message):
    with pytest.raises(ConfigError) as info:
        check_int("min_group_size", value, **bounds)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "value, bounds",
    [
        (0, {}),
        (-1.5, {}),
        (1, {"low": 1}),
        (0.5, {"low": 0, "low_open": True}),
        (1.0, {"high": 1}),
        (0.99, {"high": 1, "high_open": True}),
        (1e-5, {"low": 0, "high": 1, "low_open": True, "high_open": True}),
    ],
)
def test_check_number_accepts_finite_numbers_within_bounds(value, bounds):
    got = check_number("x", value, **bounds)
    assert got == value and type(got) is float


@pytest.mark.parametrize(
    "value, bounds, message",
    [
        (0.0, {"low": 0.0, "low_open": True}, "clip must be a finite number > 0, got 0.0"),
        (-0.1, {"low": 0.0}, "clip must be a finite number >= 0, got -0.1"),
        (1.0, {"high": 1.0, "high_open": True}, "clip must be a finite number < 1, got 1.0"),
        (1.5, {"high": 1}, "clip must be a finite number <= 1, got 1.5"),
        (
            1.0,
            {"low": 0.0, "high": 1.0, "low_open": True, "high_open": True},
            "clip must be a finite number in (0, 1), got 1.0",
        ),
        (0.0, {"low": 0.0, "high": 1.0, "low_open": True}, "clip must be a finite number in (0, 1], got 0.0"),
        (1.0, {"low": 0.0, "high": 1.0, "high_open": True}, "clip must be a finite number in [0, 1), got 1.0"),
        (math.nan, {}, "clip must be a finite number, got nan"),
        (math.inf, {"low": 0.0}, "clip must be a finite number >= 0, got inf"),
        (-math.inf, {}, "clip must be a finite number, got -inf"),
        (True, {}, "clip must be a finite number, got True"),
        ("1", {}, "clip must be a finite number, got '1'"),
        (None, {}, "clip must be a finite number, got None"),
    ],
)
def test_check_number_refuses_naming_the_argument(value, bounds, message):
    with pytest.raises(ConfigError) as info:
        check_number("clip", value, **bounds)
    assert str(info.value) == message


def test_check_bool():
    assert check_bool("allow_plain", True) is True and check_bool("allow_plain", False) is False
    for value in (1, 0, "no", None):
        with pytest.raises(ConfigError, match=f"allow_plain must be true or false, got {value!r}"):
            check_bool("allow_plain", value)


def test_check_choice():
    assert check_choice("mode", "local", ("off", "local")) == "local"
    assert check_choice("mechanism", "skellam", {"skellam": None, "discrete_gaussian": None}) == "skellam"
    for value in ("central", "", None, 1):
        with pytest.raises(ConfigError) as info:
            check_choice("mode", value, ("off", "local"))
        assert str(info.value) == f"mode must be one of 'off', 'local', got {value!r}"


def test_the_caller_picks_the_error_class():
    with pytest.raises(PrivacyError, match="delta must be a finite number in"):
        check_number("delta", 1.0, low=0.0, high=1.0, low_open=True, high_open=True, error=PrivacyError)
    with pytest.raises(SecAggError, match="phase must be an int"):
        check_int("phase", -1, low=0, error=SecAggError)
    with pytest.raises(PrivacyError):
        check_bool("flag", 1, error=PrivacyError)
    with pytest.raises(PrivacyError):
        check_choice("mechanism", "gaussian", ("skellam",), error=PrivacyError)

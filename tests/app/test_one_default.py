"""One default per quantity: where a library configuration keeps a default for a quantity the command line
also has, the two agree; the listed exceptions are different quantities under the same name."""

from __future__ import annotations

import dataclasses

import pytest

from mrff_secure.app import options
from mrff_secure.config import FederationConfig, ModelConfig
from mrff_secure.dp import DPConfig
from mrff_secure.round.spec import PrivacySettings

DIFFERENT_QUANTITIES = {
    # the option's 0 means "the dataset's default history length"; the model needs a length
    ("ModelConfig", "maxlen"),
    # the plain simulation's suppression (1: none); the option is the secure rounds' minimum group size
    ("FederationConfig", "min_group_size"),
    # DPConfig's own mode defaults to off, where dropouts size no noise; the option is distributed DP's
    ("DPConfig", "max_dropout_fraction"),
    # PrivacySettings.dp is a DPConfig, the option its mode; None: from the federation's / the mode's rule
    ("PrivacySettings", "dp"),
    ("PrivacySettings", "min_group_size"),
    # the command line's None means "on exactly when DP is distributed"; the library's off is that rule's plain case
    ("PrivacySettings", "secure_aggregation"),
    # None: no ring without secure aggregation (required with it)
    ("PrivacySettings", "modulus_bits"),
}


@pytest.mark.parametrize("config", [ModelConfig, FederationConfig, DPConfig, PrivacySettings])
def test_library_defaults_agree_with_the_options(config):
    for field in dataclasses.fields(config):
        option = options.BY_NAME.get(field.name)
        if (
            option is None
            or field.default is dataclasses.MISSING
            or (config.__name__, field.name) in DIFFERENT_QUANTITIES
        ):
            continue
        assert field.default == option.default, (
            f"{config.__name__}.{field.name}: {field.default!r} != {option.default!r}"
        )


def test_quantities_without_a_library_default_are_required():
    with pytest.raises(TypeError, match="rounds"):
        FederationConfig()  # type: ignore[call-arg]

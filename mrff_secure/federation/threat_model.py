"""The threat models, named once: which view of a round the server (the adversary) has.

- ``plain``: each client's raw update, identified (no secure aggregation, no noise).
- ``secagg``: only the group-wise sums of a round (secure aggregation, no noise).
- ``secagg+dp``: those sums with distributed discrete noise.
- ``local-dp``: each client's noisy update, identified (the paper's Table 2).
- ``malicious-server``: the active attacks of SECURITY.md against the real client code (no
  `ServerView`: those attacks drive the protocol, they do not read a simulation's view).

`FederatedSimulation` stamps every `ServerView` with the model that produced it, and an attack
states the models whose view it may read (`require_view`), so no attack reads a view it should not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mrff_secure.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from mrff_secure.federation.privacy_pipeline import PrivacySettings

PLAIN = "plain"
SECAGG = "secagg"
SECAGG_DP = "secagg+dp"
LOCAL_DP = "local-dp"
MALICIOUS_SERVER = "malicious-server"
THREAT_MODELS = (PLAIN, SECAGG, SECAGG_DP, LOCAL_DP, MALICIOUS_SERVER)
INDIVIDUAL_VIEWS = (PLAIN, LOCAL_DP)
"""The models whose view holds each client's (identified) upload."""
SUM_VIEWS = (SECAGG, SECAGG_DP)
"""The models whose view holds only the round's sums."""


def threat_model_for(privacy: "PrivacySettings | None", *, plain_individual_view: bool) -> str:
    """The model a simulation's observer lives in, from the run's privacy settings."""
    if privacy is None or privacy.plain:
        return PLAIN if plain_individual_view else SECAGG
    if privacy.dp.mode == "local":
        return LOCAL_DP
    return SECAGG_DP if privacy.dp.enabled else SECAGG


class ThreatModelError(ConfigError):
    """An attack was handed a view of a threat model it may not read."""


def require_view(threat_model: str, allowed: tuple[str, ...], attack: str) -> None:
    """Refuse a view of another threat model than `allowed`, naming the attack and both."""
    if threat_model not in THREAT_MODELS:
        raise ThreatModelError(f"unknown threat model {threat_model!r}; known: {THREAT_MODELS}")
    if threat_model not in allowed:
        raise ThreatModelError(f"{attack} reads views of {allowed}, not of {threat_model!r}")

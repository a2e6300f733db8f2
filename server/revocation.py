"""The identity authority's revocation list at enrolment (W18 in SECURITY.md): a revoked (client id,
identity key) pair is refused, so a credential re-keyed away stops working before it expires."""

from __future__ import annotations

from typing import Any

from mrff_secure.pki import RevocationList
from server.coordinator import Coordinator
from server.errors import EnrolmentRefused


class RevocationCheckingCoordinator(Coordinator):
    """A Coordinator that refuses, before anything else is checked, the enrolment of a pair the authority
    revoked (PERMISSION_DENIED, audited like every refusal)."""

    def __init__(self, *args: Any, revoked: RevocationList | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.revoked = revoked

    def enrol(self, client_id: int, public_key: bytes, *args: Any, **kwargs: Any) -> bytes:
        if self.revoked is not None and self.revoked.covers(client_id, public_key):
            raise EnrolmentRefused(
                f"the identity authority revoked client {client_id}'s identity key ({self.revoked.source}): "
                "enrol with a key it certified since (`mrff certs issue-client --force`)"
            )
        return super().enrol(client_id, public_key, *args, **kwargs)

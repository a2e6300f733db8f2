"""Why the coordinator refused a request: one domain error per cause.

The servicer maps each class to one gRPC status (server/service.py); the
coordinator itself knows nothing about gRPC.
"""

from __future__ import annotations

from mrff_secure.errors import MrffError


class Rejected(MrffError):
    """A request the coordinator refused; the round goes on without it."""


class Malformed(Rejected):
    """The bytes do not parse, or the message is of the wrong type for the stage."""


class UnknownClient(Rejected):
    """No enrolment, or the session token does not match."""


class EnrolmentRefused(Rejected):
    """No valid credential from the identity authority for (client id, key), or an id already bound to another key."""


class NotParticipant(Rejected):
    """The client is not (or no longer) part of this round or stage, or names another client."""


class WrongRound(Rejected):
    """The message is for another round than the one running."""


class WrongStage(Rejected):
    """The message is for a stage that is not open (too early, too late, or after a stall)."""


class WrongLength(Rejected):
    """A vector of the wrong length or modulus."""


class Replay(Rejected):
    """A second message for a stage the client already answered."""


class BadSignature(Rejected):
    """A signature or ciphertext did not verify."""


class RoundAborted(Rejected):
    """The round was aborted (too few survivors); nothing was released."""


class ShuttingDown(Rejected):
    """The coordinator is stopping."""

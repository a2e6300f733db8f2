"""The project's exception tree: every error a user can cause derives from MrffError."""


class MrffError(Exception):
    """Base class of every error raised on purpose by mrff-secure."""


class ConfigError(MrffError, ValueError):
    """A configuration value is invalid or the combination is impossible."""


class DataFormatError(MrffError, ValueError):
    """An input file is missing, malformed, or inconsistent (the message names file and column)."""


class CheckpointError(MrffError):
    """A checkpoint or stored client state is missing, corrupt, or does not match the model."""


class SecAggError(MrffError):
    """Secure aggregation failed (base class of the protocol errors)."""


class ProtocolViolation(SecAggError):
    """A peer or the server sent something the protocol forbids (wrong stage, bad list, replay...)."""


class AuthenticationError(SecAggError):
    """A signature, MAC or ciphertext did not verify. Deliberately opaque."""


class AggregationAborted(SecAggError):
    """Too few survivors to recover the sum; no partial sum is ever released."""


class PrivacyError(MrffError, ValueError):
    """Invalid privacy parameters or an impossible privacy target."""


class ConnectionFailed(MrffError):
    """The server cannot be reached, or refuses the connection for a reason retrying does not fix (TLS)."""

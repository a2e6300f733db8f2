"""Explicit message-size limits and metadata keys of the wire protocol."""

from __future__ import annotations

# 2: credentials with expiry, the enrolment challenge, signed stage messages; 3: secure sums bound to the round
# body (W21); 4: the signed DeploymentBody (the data schema) in the enrolment reply; 5: the round's weight decay
# and scheduled lr in TrainingParameters, the final evaluation (RoundBody.evaluation_only)
PROTOCOL_VERSION = 5

MIB = 1 << 20
MAX_ANNOUNCEMENT_BYTES = 256 * MIB
"""Largest message a client accepts (a round announcement carries the whole global model)."""
DEFAULT_MAX_UPLOAD_BYTES = 64 * MIB
"""Default ceiling of the server's receive cap (`mrff server --max-upload-mib`). The cap itself is computed per
run (server/message_caps.py: the largest message a client of the run can legitimately send); a run whose
legitimate messages exceed the ceiling is refused at start."""
MAX_CLIENT_SEND_BYTES = 64 * MIB
MAX_WAIT_MS = 30_000
"""Longest long-poll the server honours in GetRound / Fetch."""

META_CLIENT = "x-mrff-client"
META_SESSION = "x-mrff-session"


def server_options(max_receive_bytes: int) -> list[tuple[str, int]]:
    """The server's gRPC options; `max_receive_bytes`: its run's largest legitimate request (gRPC refuses
    anything larger with RESOURCE_EXHAUSTED)."""
    return [
        ("grpc.max_receive_message_length", int(max_receive_bytes)),
        ("grpc.max_send_message_length", MAX_ANNOUNCEMENT_BYTES),
        ("grpc.so_reuseport", 0),
    ]


def client_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_ANNOUNCEMENT_BYTES),
        ("grpc.max_send_message_length", MAX_CLIENT_SEND_BYTES),
    ]

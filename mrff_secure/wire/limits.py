"""Explicit message-size limits and metadata keys of the wire protocol."""

from __future__ import annotations

PROTOCOL_VERSION = 1

MIB = 1 << 20
MAX_ANNOUNCEMENT_BYTES = 256 * MIB
"""Largest message a client accepts (a round announcement carries the whole global model)."""
DEFAULT_MAX_UPLOAD_BYTES = 64 * MIB
"""Default largest message the server accepts (a masked update vector); `mrff server --max-upload-mib`."""
MAX_CLIENT_SEND_BYTES = 64 * MIB
MAX_WAIT_MS = 30_000
"""Longest long-poll the server honours in GetRound / Fetch."""

META_CLIENT = "x-mrff-client"
META_SESSION = "x-mrff-session"


def server_options(max_upload_bytes: int) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", int(max_upload_bytes)),
        ("grpc.max_send_message_length", MAX_ANNOUNCEMENT_BYTES),
        ("grpc.so_reuseport", 0),
    ]


def client_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_ANNOUNCEMENT_BYTES),
        ("grpc.max_send_message_length", MAX_CLIENT_SEND_BYTES),
    ]

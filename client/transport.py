"""The network side of one logical client: its gRPC channel, retries with exponential backoff and
jitter, enrolling again when a restarted server forgot our session, and the classification of
failures into the ones worth waiting out and the ones retrying never fixes.

One rule for a server that is not there: nothing listening (connection refused), a connection reset,
UNAVAILABLE and deadlines are retried for `Connection.retry_timeout` (`--retry-timeout`, 120 s by
default), before the first contact as after it: a client started before its server, or across a
server restart or `--resume`, keeps trying that long, and its process prints one line
(`WAITING for the server at HOST:PORT ...`) when it starts waiting and one when the server answers again.

Permanent, ended within seconds with one `ConnectionFailed` line naming the cause: the TLS handshake
fails (the server's certificate is not signed by our CA, or does not name the host we asked for; the
server requires a client certificate we do not present; one side does not speak TLS). A permanent
error is only believed once it has lasted `CONFIRM_S` (a server killed in the middle of a handshake
is not a wrong CA); after we reached the server once, `CONFIRM_AFTER_CONTACT_S`.

The one exception: a host name that does not resolve, before the first contact (a typo in `--address`),
ends after `Connection.resolve_timeout` (10 s, or the retry timeout if that is shorter).
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import Message

from mrff_secure.errors import ConnectionFailed, MrffError
from mrff_secure.wire import limits
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from mrff_secure.wire.v1 import coordinator_pb2_grpc as pb_grpc

RESOLVE_TIMEOUT = 10.0  # a host name that does not resolve, before the first contact
CONFIRM_S = 2.0  # a permanent-looking error must last this long before we give up
CONFIRM_AFTER_CONTACT_S = 10.0  # ... and this long once we have reached the server (it may be restarting)
MAX_BACKOFF = 5.0
WAIT_NOTICE_S = 1.0  # a failure that lasts this long is a wait the operator is told about (not a blip)
# gRPC's own reconnection backoff grows to 120 s by default: a restarted server would be found late.
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 500), ("grpc.max_reconnect_backoff_ms", 5_000)]
RETRIED_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class ClientFailure(MrffError):
    """A logical client gave up (server unreachable, enrolment refused, untrustworthy server)."""


class Reconnected(Exception):
    """The server forgot our session (it restarted): we enrolled again."""


@dataclass(frozen=True)
class Connection:
    target: str
    credentials: grpc.ChannelCredentials | None  # None: insecure (only with --insecure)
    signing_key: Ed25519PublicKey
    authority_public_key: bytes  # the identity authority's raw Ed25519 key: peers' credentials verify under it
    retry_timeout: float = 120.0  # transient failures (a server restarting) are retried this long
    server_name: str | None = None  # TLS name override (the certificate's host name)
    resolve_timeout: float | None = None  # a host name that does not resolve, before first contact (None: 10 s)
    ca_file: Path | str | None = None  # only named in messages: the CA the credentials trust
    client_certificate: bool | None = None  # only for messages: the credentials hold one (None: unknown)

    @property
    def unresolved_timeout(self) -> float:
        wanted = RESOLVE_TIMEOUT if self.resolve_timeout is None else self.resolve_timeout
        return min(wanted, self.retry_timeout)


@dataclass(frozen=True)
class Diagnosis:
    kind: str  # refused, resolve, tls_ca, tls_name, client_cert, not_tls, needs_tls, tls, transient
    reason: str  # gRPC's words, shortened

    @property
    def permanent(self) -> bool:
        return self.kind in ("tls_ca", "tls_name", "client_cert", "not_tls", "needs_tls", "tls")

    @property
    def unresolved(self) -> bool:
        """Bounded by the resolve timeout until we have reached the server once (a typo in --address)."""
        return self.kind == "resolve"


_OPENSSL = re.compile(r"OPENSSL_internal:([A-Z0-9_]+)(?::\s*([^:]+))?")
_CA_PROBLEMS = (
    "CERTIFICATE_VERIFY_FAILED",
    "BAD_SIGNATURE",
    "certificate signature failure",
    "local issuer",
    "self signed",
    "self-signed",
    "unknown ca",
    "UNKNOWN_CA",
)
_NOT_TLS = ("WRONG_VERSION_NUMBER", "PACKET_LENGTH_TOO_LONG", "HTTP_REQUEST", "record layer failure")


def _tls_reason(text: str) -> str:
    """'certificate signature failure' out of BoringSSL's 'error:1a000064:ECDSA routines:OPENSSL_internal:
    BAD_SIGNATURE: certificate signature failure: OK'."""
    match = _OPENSSL.search(text)
    if match is None:
        return text.rsplit("Tls handshake failed", 1)[-1].strip(" :()") or "TLS handshake failed"
    words = (match.group(2) or "").strip()
    return words if words and words != "OK" else match.group(1)


def classify(exc: grpc.RpcError, *, tls: bool) -> Diagnosis:
    """What an UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED failure of gRPC means (from its details: gRPC
    gives no structured cause). Only a failure to connect ('failed to connect to all addresses') can be
    permanent: an established connection that breaks is a server going away."""
    details = exc.details() or ""
    if exc.code() != grpc.StatusCode.UNAVAILABLE:
        return Diagnosis("transient", f"{exc.code().name}: {details}")
    if "errors resolving" in details or "DNS resolution failed" in details:
        return Diagnosis("resolve", details.split("[", 1)[-1].rstrip("]"))
    if "failed to connect to all addresses" not in details:
        return Diagnosis("transient", details)
    last = details.split("last error:", 1)[-1].strip()
    if "Connection refused" in last:
        return Diagnosis("refused", "connection refused")
    if "Hostname Verification" in last or ("hostname" in last.lower() and "verif" in last.lower()):
        return Diagnosis("tls_name", "host name verification failed")
    if "Tls handshake failed" in last or "SSL_ERROR" in last:
        reason = _tls_reason(last)
        if any(s in last for s in _NOT_TLS):
            return Diagnosis("not_tls", reason)
        if any(s in last for s in _CA_PROBLEMS):
            return Diagnosis("tls_ca", reason)
        return Diagnosis("tls", reason)
    if last.endswith("Socket closed") or "Connection reset" in last:
        # The server hung up on a connection it had accepted. With TLS: after our side of the handshake
        # (gRPC's servers check the client certificate then, and close without an alert). In plaintext: a
        # TLS server dropping bytes that are no TLS record.
        return Diagnosis("client_cert" if tls else "needs_tls", "the server closed the connection")
    return Diagnosis("transient", last)


def describe(diagnosis: Diagnosis, connection: Connection) -> str:
    """One line naming the cause of a permanent failure, and what to do about it."""
    target = connection.target
    where = f"cannot connect to {target}:"
    ca = f"CA {connection.ca_file}" if connection.ca_file else "the CA this client trusts (--ca, default CERTS/ca.crt)"
    kind, reason = diagnosis.kind, diagnosis.reason
    if kind == "tls_ca":
        return f"{where} the server's certificate is not signed by {ca}: TLS handshake failed ({reason})"
    if kind == "tls_name":
        host = connection.server_name or target.rsplit(":", 1)[0]
        return (
            f"{where} the server's certificate does not name {host} (TLS host name check failed); "
            "connect with a name in its certificate or pass --server-name"
        )
    if kind == "client_cert":
        if connection.client_certificate:
            return (
                f"{where} the server refused our client certificate (mutual TLS): it is not signed by the CA "
                "the server trusts for clients"
            )
        if connection.client_certificate is None:
            return (
                f"{where} the server closed the connection after the TLS handshake: it requires a client "
                "certificate (mutual TLS, the default): present one (CERTS/client.crt, client.key) signed by the "
                "CA the server trusts for clients, without --insecure-no-mtls"
            )
        return (
            f"{where} the server requires a client certificate (mutual TLS, the default): drop "
            "--insecure-no-mtls (the client certificate and key are read from CERTS/client.crt and "
            "CERTS/client.key)"
        )
    if kind == "not_tls":
        return (
            f"{where} the server does not speak TLS (TLS handshake failed: {reason}); it was started with "
            "--insecure, or it is not an mrff server"
        )
    if kind == "needs_tls":
        return (
            f"{where} the server closed the connection at once: it expects TLS and this client was started "
            "with --insecure"
        )
    if kind == "tls":
        return f"{where} TLS handshake failed ({reason})"
    raise AssertionError(kind)


def _unreachable(diagnosis: Diagnosis, connection: Connection, waited: float, contacted: bool) -> str:
    target = connection.target
    if diagnosis.kind == "refused" and not contacted:
        return (
            f"nothing listening at {target} (connection refused, for {waited:.0f} s, the --retry-timeout): "
            "start the server, or check --address"
        )
    if diagnosis.kind == "resolve":
        return f"cannot connect to {target}: its host name does not resolve ({diagnosis.reason})"
    return (
        f"server {target} unreachable for {waited:.0f} s ({diagnosis.reason}); it did not come back within "
        "--retry-timeout"
    )


class ServerWait:
    """One process's lines while its logical clients wait for the server: `WAITING ...` when the first of them
    starts waiting, `SERVER ... answers again` when one reaches it again (shared by the logical clients, so a
    process of thousands prints two lines, not thousands)."""

    def __init__(self, target: str, emit: Callable[[str], None]) -> None:
        self.target = target
        self._emit = emit
        self._lock = threading.Lock()
        self._since: float | None = None  # when the current wait began; None: not waiting
        self._reached = -math.inf  # when a logical client last reached the server after a wait

    def started(self, reason: str, budget: float, failing_since: float) -> None:
        """A logical client has been failing since `failing_since` (monotonic): said once per outage (a failure that
        began before another client reached the server again is the tail of the outage already said)."""
        with self._lock:
            if self._since is not None or failing_since <= self._reached:
                return
            self._since = time.monotonic()
        self._emit(
            f"WAITING for the server at {self.target} ({reason}); retrying for up to {budget:.0f} s (--retry-timeout)"
        )

    def ended(self) -> None:
        with self._lock:
            if self._since is None:
                return
            self._reached = time.monotonic()
            waited, self._since = self._reached - self._since, None
        self._emit(f"SERVER at {self.target} answers again after {waited:.0f} s")


class Transport:
    """One channel to the coordinator, for one logical client; every RPC goes through `call`."""

    def __init__(
        self,
        user: int,
        connection: Connection,
        *,
        stop: threading.Event,
        enrol_request: Callable[[str, bytes], pb.EnrolRequest],
        on_enrolled: Callable[[pb.EnrolReply, bytes], None] | None = None,
        waiting: ServerWait | None = None,
    ) -> None:
        self.user = user
        self.connection = connection
        self.stop = stop
        self._enrol_request = enrol_request
        self._on_enrolled = on_enrolled  # checks the reply (the signed deployment) before we keep the session
        self.waiting = waiting  # the process's one line while the server is away
        options: list[tuple[str, int | str]] = [*limits.client_options(), *CHANNEL_OPTIONS]
        if connection.server_name:
            options.append(("grpc.ssl_target_name_override", connection.server_name))
        if connection.credentials is None:
            self.channel = grpc.insecure_channel(connection.target, options=options)
        else:
            self.channel = grpc.secure_channel(connection.target, connection.credentials, options=options)
        self.stub = pb_grpc.CoordinatorStub(self.channel)
        self.session = b""
        self.enrolled_run_id: str | None = None  # the run id our last enrolment proof was signed for
        self.contacted = False  # the server answered at least once (a refusal is then a restart)

    def close(self) -> None:
        self.channel.close()

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return ((limits.META_CLIENT, str(self.user)), (limits.META_SESSION, self.session.hex()))

    def enrol(self) -> str:
        """Enrol (again): ask the server for a challenge (its run id and a fresh nonce), sign it into the
        enrolment proof (`enrol_request(run_id, nonce)`), and start a new session. Returns the run id we
        enrolled in (also kept as `enrolled_run_id`). ClientFailure if the server refuses us."""
        try:
            challenge = self._retrying(
                self.stub.EnrolChallenge, pb.EnrolChallengeRequest(client_id=self.user), timeout=30.0, metadata=None
            )
            run_id = str(challenge.run_id)
            reply = self._retrying(
                self.stub.Enrol, self._enrol_request(run_id, bytes(challenge.nonce)), timeout=30.0, metadata=None
            )
        except grpc.RpcError as exc:
            raise ClientFailure(f"user {self.user}: enrolment refused: {exc.code().name}: {exc.details()}") from exc
        except ValueError as exc:  # a challenge we cannot sign (a nonce of the wrong length)
            raise ClientFailure(f"user {self.user}: the server's enrolment challenge is malformed: {exc}") from exc
        if reply.run_id != run_id:
            raise ClientFailure(
                f"user {self.user}: the server enrolled us in run {reply.run_id!r} but challenged us for run {run_id!r}"
            )
        if self._on_enrolled is not None:
            self._on_enrolled(reply, bytes(challenge.nonce))  # raises ClientFailure to refuse this server
        self.session = reply.session_token
        self.enrolled_run_id = run_id
        return run_id

    def call(self, name: str, request: Message, *, timeout: float) -> Any:
        """The RPC `name` in our session. Reconnected if the server forgot the session (we enrolled again);
        grpc.RpcError for the server's refusals; ConnectionFailed if it cannot be reached."""
        try:
            return self._retrying(getattr(self.stub, name), request, timeout=timeout, metadata=self._metadata())
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAUTHENTICATED and "session" in (exc.details() or ""):
                self.enrol()
                raise Reconnected() from exc
            raise

    def _retrying(
        self,
        method: Callable[..., Any],
        request: Message,
        *,
        timeout: float,
        metadata: tuple[tuple[str, str], ...] | None,
    ) -> Any:
        delay = 0.2
        failing_since = None  # when this run of failures began
        streak: tuple[str, float] | None = None  # (kind, since) of a permanent-looking failure
        tls = self.connection.credentials is not None
        while True:
            if self.stop.is_set():
                raise ClientFailure(f"user {self.user}: stopped")
            try:
                reply = method(request, timeout=timeout, metadata=metadata)
                self.contacted = True
                if failing_since is not None and self.waiting is not None:
                    self.waiting.ended()
                return reply
            except grpc.RpcError as exc:
                if exc.code() not in RETRIED_CODES:
                    self.contacted = True  # the server itself answered
                    if failing_since is not None and self.waiting is not None:
                        self.waiting.ended()
                    raise
                if self.stop.is_set():  # our own close() cancelled it
                    raise ClientFailure(f"user {self.user}: stopped") from exc
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                diagnosis = classify(exc, tls=tls)
                if diagnosis.permanent:
                    if streak is None or streak[0] != diagnosis.kind:
                        streak = (diagnosis.kind, now)
                    if now - streak[1] >= (CONFIRM_AFTER_CONTACT_S if self.contacted else CONFIRM_S):
                        raise ConnectionFailed(describe(diagnosis, self.connection)) from exc
                else:
                    streak = None
                budget = self.connection.retry_timeout
                if diagnosis.unresolved and not self.contacted:
                    budget = self.connection.unresolved_timeout
                waited = now - failing_since
                if not diagnosis.permanent and self.waiting is not None and waited >= WAIT_NOTICE_S:
                    self.waiting.started(diagnosis.reason, budget, failing_since)
                if waited >= budget:
                    raise ConnectionFailed(
                        describe(diagnosis, self.connection)
                        if diagnosis.permanent
                        else _unreachable(diagnosis, self.connection, waited, self.contacted)
                    ) from exc
                pause = delay * (0.5 + random.random())
                if streak is not None:  # look again soon: the point is to be sure, not to wait
                    pause = min(pause, 0.5)
                self.stop.wait(min(pause, max(budget - waited, 0.05)))
                delay = min(delay * 2, MAX_BACKOFF)

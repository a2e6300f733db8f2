"""The gRPC boundary of the coordinator: a thin servicer, the authentication interceptor, and
`create_server(address, coordinator, ...) -> (server, port)`.

Requests arrive as raw bytes and are parsed here, so a message that is not valid protobuf gets
INVALID_ARGUMENT (not gRPC's generic INTERNAL) and an audit-log entry. Domain errors from the
coordinator become one gRPC status each, only here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from mrff_secure.errors import ConfigError
from mrff_secure.pki import read_file
from mrff_secure.wire import limits
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from server import errors
from server.coordinator import Coordinator
from server.enrol_challenges import TooManyChallenges
from server.message_caps import MessageCaps

log = logging.getLogger("mrff.server")

SERVICE = "mrff_secure.v1.Coordinator"

STATUS = {
    errors.Malformed: grpc.StatusCode.INVALID_ARGUMENT,
    errors.WrongLength: grpc.StatusCode.INVALID_ARGUMENT,
    errors.UnknownClient: grpc.StatusCode.UNAUTHENTICATED,
    errors.BadSignature: grpc.StatusCode.UNAUTHENTICATED,
    errors.EnrolmentRefused: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotParticipant: grpc.StatusCode.PERMISSION_DENIED,
    errors.WrongRound: grpc.StatusCode.OUT_OF_RANGE,
    errors.WrongStage: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Replay: grpc.StatusCode.ALREADY_EXISTS,
    errors.RoundAborted: grpc.StatusCode.ABORTED,
    errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
}
NOT_AUDITED = (errors.RoundAborted, errors.ShuttingDown)  # outcomes, not bad input


class Oversized(errors.Rejected):
    pass


STATUS[Oversized] = grpc.StatusCode.RESOURCE_EXHAUSTED
STATUS[TooManyChallenges] = grpc.StatusCode.RESOURCE_EXHAUSTED
OPEN_METHODS = ("EnrolChallenge", "Enrol")  # no session yet: the enrolment proof authenticates


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    client_ca: Path | None = None  # set: mutual TLS, clients must present a certificate from this CA


RequestT = TypeVar("RequestT", bound=Message)


def _metadata(items: Iterable[tuple[str, Any]] | None) -> dict[str, str]:
    """Text metadata as a dict (binary "-bin" entries are ignored: we define none)."""
    return {k: v for k, v in (items or ()) if isinstance(v, str)}


def _client_id(metadata: dict[str, str]) -> int | None:
    value = metadata.get(limits.META_CLIENT, "")
    return int(value) if value.isdigit() and len(value) <= 10 else None


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """End the call with `code` (grpc's abort raises; the raise below only states that for the type checker)."""
    context.abort(code, message)
    raise RuntimeError(f"grpc.ServicerContext.abort returned instead of ending the call with {code}")


def _authenticated(client: int | None) -> int:
    """The caller's client id; the interceptor admits no session call without one."""
    if client is None:
        raise errors.UnknownClient("no client id in the call's metadata: enrol first")
    return client


def _deny(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    def handler(request: bytes, context: grpc.ServicerContext) -> None:
        context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(handler)


class AuthInterceptor(grpc.ServerInterceptor):
    """EnrolChallenge and Enrol are open (the coordinator checks the credential from the identity authority
    and a proof of the key over its run id and a fresh challenge); every other call needs a live session (client id + session token)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self._coordinator = coordinator

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        if not method.startswith(f"/{SERVICE}/"):
            return continuation(handler_call_details)
        metadata = _metadata(handler_call_details.invocation_metadata)
        name = method.rsplit("/", 1)[-1]
        if name in OPEN_METHODS:
            return continuation(handler_call_details)
        client = _client_id(metadata)
        try:
            session = bytes.fromhex(metadata.get(limits.META_SESSION, ""))
        except ValueError:
            session = b""
        if client is None or not self._coordinator.authenticate(client, session):
            self._coordinator.record_rejection(client, name, "UNAUTHENTICATED", "unknown client or session")
            return _deny(
                grpc.StatusCode.UNAUTHENTICATED,
                "unknown client or session: enrol first (sessions end when the server restarts)",
            )
        return continuation(handler_call_details)


class CoordinatorService:
    """Parses requests, calls the coordinator, maps its errors to statuses."""

    def __init__(self, coordinator: Coordinator, caps: MessageCaps) -> None:
        self.coordinator = coordinator
        self.caps = caps  # the largest request each method of this run can legitimately be

    def _call(
        self,
        name: str,
        request_type: type[RequestT],
        raw: bytes,
        context: grpc.ServicerContext,
        body: Callable[[int | None, RequestT], Message],
    ) -> bytes:
        client = _client_id(_metadata(context.invocation_metadata()))
        try:
            if len(raw) > self.caps.of(name):  # before parsing: nothing of it is kept
                raise Oversized(
                    f"{name} request of {len(raw)} bytes is over this run's limit of {self.caps.of(name)} bytes "
                    f"for {name}"
                )
            try:
                request = request_type.FromString(raw)
            except (DecodeError, ValueError) as exc:
                raise errors.Malformed(f"{request_type.__name__} does not parse: {exc}") from exc
            response: bytes = body(client, request).SerializeToString()
            self.coordinator.count_bytes(len(raw), len(response))
            return response
        except errors.Rejected as exc:
            code = STATUS.get(type(exc), grpc.StatusCode.INVALID_ARGUMENT)
            if not isinstance(exc, NOT_AUDITED):
                self.coordinator.record_rejection(client, name, code.name, str(exc))
            _abort(context, code, str(exc))
        except grpc.RpcError:
            raise
        except Exception:  # a bug: answer INTERNAL, keep serving
            log.exception("internal error in %s", name)
            _abort(context, grpc.StatusCode.INTERNAL, "internal server error")

    def enrol_challenge(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        def body(_client: int | None, request: pb.EnrolChallengeRequest) -> pb.EnrolChallengeReply:
            nonce = self.coordinator.enrol_challenge(context.peer() or "", request.client_id)
            return pb.EnrolChallengeReply(run_id=self.coordinator.run_id, nonce=nonce)

        return self._call("EnrolChallenge", pb.EnrolChallengeRequest, raw, context, body)

    def enrol(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        def body(_client: int | None, request: pb.EnrolRequest) -> pb.EnrolReply:
            try:
                if request.protocol_version != limits.PROTOCOL_VERSION:
                    raise errors.Malformed(
                        f"protocol version {request.protocol_version} is not supported "
                        f"(this server speaks {limits.PROTOCOL_VERSION})"
                    )
                token = self.coordinator.enrol(
                    request.client_id,
                    request.identity_public_key,
                    request.proof,
                    request.credential,
                    request.challenge_nonce,
                    skips_evaluation=request.skips_evaluation,
                    schema_digest=request.schema_digest[:128],
                )
            except errors.Rejected as exc:  # the operator's line; the audit record follows in _call
                self.coordinator.enrolment_refused(request.client_id, str(exc)[:500])
                raise
            return pb.EnrolReply(
                session_token=token,
                run_id=self.coordinator.run_id,
                deployment=self.coordinator.deployment(request.client_id, request.challenge_nonce),
            )

        return self._call("Enrol", pb.EnrolRequest, raw, context, body)

    def get_round(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        def body(client: int | None, request: pb.GetRoundRequest) -> pb.GetRoundReply:
            wait = min(request.wait_ms, limits.MAX_WAIT_MS) / 1000.0
            signed = self.coordinator.get_round(request.after_round, wait, client)
            return pb.GetRoundReply(pending=True) if signed is None else pb.GetRoundReply(round=signed)

        return self._call("GetRound", pb.GetRoundRequest, raw, context, body)

    def submit(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        def body(client: int | None, request: pb.SubmitRequest) -> pb.SubmitReply:
            self.coordinator.submit(
                _authenticated(client),
                request.round_id,
                request.phase,
                request.stage,
                request.payload,
                request.signature,
            )
            return pb.SubmitReply()

        return self._call("Submit", pb.SubmitRequest, raw, context, body)

    def fetch(self, raw: bytes, context: grpc.ServicerContext) -> bytes:
        def body(client: int | None, request: pb.FetchRequest) -> pb.FetchReply:
            wait = min(request.wait_ms, limits.MAX_WAIT_MS) / 1000.0
            got = self.coordinator.fetch(_authenticated(client), request.round_id, request.phase, request.stage, wait)
            if got is None:
                return pb.FetchReply(pending=True)
            kind, value = got
            return pb.FetchReply(**{kind: value})

        return self._call("Fetch", pb.FetchRequest, raw, context, body)

    def handler(self) -> grpc.GenericRpcHandler:
        methods = {
            "EnrolChallenge": self.enrol_challenge,
            "Enrol": self.enrol,
            "GetRound": self.get_round,
            "Submit": self.submit,
            "Fetch": self.fetch,
        }
        return grpc.method_handlers_generic_handler(
            SERVICE, {name: grpc.unary_unary_rpc_method_handler(fn) for name, fn in methods.items()}
        )


def create_server(
    address: str,
    coordinator: Coordinator,
    *,
    tls: TlsFiles | None,
    max_upload_bytes: int = limits.DEFAULT_MAX_UPLOAD_BYTES,
    max_workers: int = 2048,
    caps: MessageCaps | None = None,
) -> tuple[grpc.Server, int]:
    """A started-ready (not yet started) server bound to `address` ("host:port", port 0 = any);
    returns (server, bound port). tls=None binds an insecure port: only for `--insecure`.

    caps: the largest request of each method (default: computed from the coordinator's model layout and
    round spec, ConfigError if that is over max_upload_bytes). gRPC itself refuses any message over the
    largest of them (RESOURCE_EXHAUSTED, before it is buffered whole); the servicer refuses, and audits, a
    request over its own method's cap."""
    if caps is None:
        caps = MessageCaps.for_run(
            coordinator.layout,
            coordinator.base_spec,
            num_neighbours=coordinator.settings.num_neighbours,
            ceiling=max_upload_bytes,
        )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="mrff-rpc"),
        interceptors=[AuthInterceptor(coordinator)],
        options=limits.server_options(caps.receive),
    )
    server.add_generic_rpc_handlers([CoordinatorService(coordinator, caps).handler()])
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            credentials = grpc.ssl_server_credentials(
                [(read_file(tls.key, "server key"), read_file(tls.cert, "server certificate"))],
                root_certificates=None if tls.client_ca is None else read_file(tls.client_ca, "client CA"),
                require_client_auth=tls.client_ca is not None,
            )
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # newer gRPC raises instead of returning 0
        raise ConfigError(f"could not bind {address}: {exc}") from exc
    if port == 0:
        raise ConfigError(f"could not bind {address}")
    return server, port

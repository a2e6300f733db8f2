"""A client that can never join stops within seconds with one line naming why (wrong CA, a server
that requires a client certificate, a certificate for another host name, TLS against plaintext),
nothing listening stops after a short retry, and a server that goes away after the first contact is
waited for (--retry-timeout). The real `python -m mrff_secure.app.cli client`, default retry timeout.
Also: the transport's retry rules on scripted gRPC failures, and the one line per round."""

from __future__ import annotations

import io
import socket
import threading
import time

import grpc
import pytest

from client import transport
from client.report import RoundReporter, RoundResult
from client.transport import Connection, Transport, classify
from mrff_secure.errors import ConnectionFailed

from . import harness

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def pki(tmp_path_factory, certs):
    tmp = tmp_path_factory.mktemp("client-errors")
    harness.issue_credentials(certs, "0", tmp / "state")
    return tmp, certs, harness.make_pki(tmp / "stranger")


@pytest.fixture(scope="module")
def tls_server(pki):
    tmp, certs, _ = pki
    server, address = harness.start_server(
        tmp, certs, tmp / "run-tls", extra=["--insecure-no-mtls", "--min-clients", "50"], name="tls"
    )
    yield address
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(pki):
    tmp, certs, _ = pki
    server, address = harness.start_server(tmp, certs, tmp / "run-mtls", extra=["--min-clients", "50"], name="mtls")
    yield address
    server.stop()


def run_client(pki, address: str, *extra: str, name: str) -> tuple[int, float, str]:
    """(exit code, seconds from start to exit, stderr) of one `mrff client` (default --retry-timeout)."""
    tmp, certs, _ = pki
    args = (
        [
            "client",
            "--address",
            address,
            "--users",
            "0",
            "--certs",
            str(certs),
            "--state-dir",
            str(tmp / "state"),
            "--client-seed",
            "1",
        ]
        + harness.DATA_ARGS
        + harness.CLIENT_POLICY
        + list(extra)
    )
    started = time.monotonic()
    proc = harness.Proc(args, tmp / f"{name}.log")
    try:
        code = proc.wait(timeout=90)
        return code, time.monotonic() - started, proc.stderr()
    finally:
        proc.stop()


def assert_one_line(stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert len(stderr.splitlines()) < 5, stderr
    assert stderr.startswith("mrff client: error: "), stderr


def test_wrong_ca_ends_at_once_naming_the_certificate(pki, tls_server) -> None:
    _, _, stranger = pki
    code, seconds, stderr = run_client(pki, tls_server, "--ca", str(stranger / "ca.crt"), name="wrong-ca")
    assert code == 1, stderr
    assert seconds < 20, (seconds, stderr)
    assert_one_line(stderr)
    assert "certificate is not signed by" in stderr and "TLS handshake failed" in stderr


def test_mtls_server_without_mtls_names_the_client_certificate(pki, mtls_server) -> None:
    code, seconds, stderr = run_client(pki, mtls_server, "--insecure-no-mtls", name="no-mtls")
    assert code == 1, stderr
    assert seconds < 20, (seconds, stderr)
    assert_one_line(stderr)
    assert "requires a client certificate" in stderr and "drop --insecure-no-mtls" in stderr


def test_mtls_with_a_client_certificate_of_another_ca_names_the_client_certificate(pki, mtls_server) -> None:
    _, certs, stranger = pki  # the stranger's client.crt/key, our CA, signing key and identity authority
    code, seconds, stderr = run_client(
        pki,
        mtls_server,
        "--certs",
        str(stranger),
        "--ca",
        str(certs / "ca.crt"),
        "--signing-pub",
        str(certs / "signing.pub"),
        "--identity-ca",
        str(certs / "identity-ca.pub"),
        name="foreign-client-cert",
    )
    assert code == 1, stderr
    assert seconds < 20, (seconds, stderr)
    assert_one_line(stderr)
    assert "client certificate" in stderr


def test_a_certificate_for_another_host_name_is_named(pki, tls_server) -> None:
    code, seconds, stderr = run_client(pki, tls_server, "--server-name", "elsewhere.example", name="wrong-name")
    assert code == 1, stderr
    assert seconds < 20, (seconds, stderr)
    assert_one_line(stderr)
    assert "does not name elsewhere.example" in stderr


def test_plaintext_client_against_a_tls_server_is_named(pki, tls_server) -> None:
    code, seconds, stderr = run_client(pki, tls_server, "--insecure", name="insecure")
    assert code == 1, stderr
    assert seconds < 20, (seconds, stderr)
    assert_one_line(stderr)
    assert "expects TLS" in stderr and "--insecure" in stderr


def test_nothing_listening_ends_after_the_retry_timeout(pki) -> None:
    """Nothing listening is waited for --retry-timeout (a server may start after its clients), then one line."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"  # closed again: nothing listens there
    code, seconds, stderr = run_client(pki, address, "--retry-timeout", "4", name="nothing-listening")
    assert code == 1, stderr
    assert seconds < 30, (seconds, stderr)
    assert_one_line(stderr)
    assert f"nothing listening at {address} (connection refused, for " in stderr and "the --retry-timeout)" in stderr


# ---------------------------------------------------------------- the transport's rules, scripted


class FakeError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


REFUSED = FakeError(
    grpc.StatusCode.UNAVAILABLE,
    "failed to connect to all addresses; last error: UNKNOWN: "
    "ipv4:127.0.0.1:9: Failed to connect to remote host: Connection refused",
)
WRONG_CA = FakeError(
    grpc.StatusCode.UNAVAILABLE,
    "failed to connect to all addresses; last error: UNKNOWN: "
    "ipv4:127.0.0.1:9: Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:"
    "SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED: unable to get local issuer "
    "certificate: OK",
)
CLOSED_AT_CONNECT = FakeError(
    grpc.StatusCode.UNAVAILABLE,
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:9: Socket closed",
)
CLOSED_IN_FLIGHT = FakeError(grpc.StatusCode.UNAVAILABLE, "Socket closed")


def test_classification_of_grpc_details() -> None:
    assert classify(REFUSED, tls=True).kind == "refused"
    ca = classify(WRONG_CA, tls=True)
    assert ca.kind == "tls_ca" and ca.permanent and ca.reason == "unable to get local issuer certificate"
    assert classify(CLOSED_AT_CONNECT, tls=True).kind == "client_cert"
    assert classify(CLOSED_AT_CONNECT, tls=False).kind == "needs_tls"
    assert not classify(CLOSED_IN_FLIGHT, tls=True).permanent  # a server going away mid-call: transient
    assert not classify(FakeError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), tls=True).permanent


class Scripted:
    """A stub method failing with `errors` in turn, then answering 'ok'."""

    def __init__(self, *errors) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, request, *, timeout, metadata):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def make_transport(**fields) -> Transport:
    connection = Connection(
        target="127.0.0.1:9",
        credentials=grpc.ssl_channel_credentials(),
        signing_key=None,
        authority_public_key=b"",
        **fields,
    )
    t = Transport(0, connection, stop=threading.Event(), enrol_request=lambda: None)
    t.close()  # only its retry loop is exercised
    return t


def test_refused_before_contact_is_waited_for_the_retry_timeout_with_one_line() -> None:
    """Issue C: a client started before its server keeps trying for --retry-timeout (not 10 s), and its
    process says once that it waits; a second logical client of the process adds no line."""
    lines: list[str] = []
    waiting = transport.ServerWait("127.0.0.1:9", lines.append)
    t = make_transport(retry_timeout=2.5, resolve_timeout=0.2)
    t.waiting = waiting
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match=r"nothing listening at 127.0.0.1:9 .*--retry-timeout"):
        t._retrying(Scripted(*[REFUSED] * 1000), None, timeout=1, metadata=None)
    assert 2.5 <= time.monotonic() - started < 5
    other = make_transport(retry_timeout=60.0)
    other.waiting = waiting
    assert other._retrying(Scripted(*[REFUSED] * 8), None, timeout=1, metadata=None) == "ok"  # the server came up
    assert len(lines) == 2, lines
    assert lines[0].startswith("WAITING for the server at 127.0.0.1:9 (connection refused); retrying for up to 2 s")
    assert lines[1].startswith("SERVER at 127.0.0.1:9 answers again after ")


def test_a_host_name_that_does_not_resolve_ends_after_the_resolve_timeout() -> None:
    unresolved = FakeError(
        grpc.StatusCode.UNAVAILABLE, "DNS resolution failed for nosuchhost:9: C-ares status is not ARES_SUCCESS"
    )
    t = make_transport(retry_timeout=60.0, resolve_timeout=0.6)
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="does not resolve"):
        t._retrying(Scripted(*[unresolved] * 1000), None, timeout=1, metadata=None)
    assert time.monotonic() - started < 3


def test_refused_after_contact_is_a_restart_waited_for_the_retry_timeout() -> None:
    t = make_transport(retry_timeout=1.5, resolve_timeout=0.2)
    t.contacted = True
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="unreachable"):
        t._retrying(Scripted(*[REFUSED] * 1000), None, timeout=1, metadata=None)
    assert 1.5 <= time.monotonic() - started < 4
    assert t._retrying(Scripted(REFUSED, REFUSED), None, timeout=1, metadata=None) == "ok"  # it came back


def test_a_permanent_error_must_last_before_it_is_believed(monkeypatch) -> None:
    monkeypatch.setattr(transport, "CONFIRM_S", 0.5)
    t = make_transport()
    assert t._retrying(Scripted(WRONG_CA, REFUSED), None, timeout=1, metadata=None) == "ok"  # a blip
    t = make_transport()  # not contacted yet (after a contact a wrong CA must last CONFIRM_AFTER_CONTACT_S)
    started = time.monotonic()
    method = Scripted(*[WRONG_CA] * 1000)
    with pytest.raises(ConnectionFailed, match="not signed by the CA this client trusts"):
        t._retrying(method, None, timeout=1, metadata=None)
    assert 0.5 <= time.monotonic() - started < 2 and method.calls >= 2


def test_the_ca_file_and_the_client_certificate_are_named_when_known() -> None:
    ca = transport.describe(classify(WRONG_CA, tls=True), make_transport(ca_file="pki/ca.crt").connection)
    assert "not signed by CA pki/ca.crt: TLS handshake failed (unable to get local issuer certificate)" in ca
    without = transport.describe(
        classify(CLOSED_AT_CONNECT, tls=True), make_transport(client_certificate=False).connection
    )
    assert "the server requires a client certificate (mutual TLS, the default): drop --insecure-no-mtls" in without
    refused = transport.describe(
        classify(CLOSED_AT_CONNECT, tls=True), make_transport(client_certificate=True).connection
    )
    assert "refused our client certificate" in refused


def test_stop_ends_the_retry_loop() -> None:
    t = make_transport(retry_timeout=60.0)
    t.contacted = True
    threading.Timer(0.3, t.stop.set).start()
    started = time.monotonic()
    with pytest.raises(transport.ClientFailure, match="stopped"):
        t._retrying(Scripted(*[REFUSED] * 1000), None, timeout=1, metadata=None)
    assert time.monotonic() - started < 3


# ---------------------------------------------------------------- one line per round


def test_one_line_per_round_for_the_clients_of_a_process() -> None:
    out = io.StringIO()
    reporter = RoundReporter([0, 1, 2, 3], lambda line: print(line, file=out, flush=True))
    participants = (0, 1, 2, 3, 4, 5)
    for user in range(4):
        assert out.getvalue() == ""  # not before every user of this process that the round sampled is done
        reporter.record(
            3, user, RoundResult(participants, started=10.0 + user, ended=12.1 + user, examples=40, uploaded=3 * 2**19)
        )
    assert out.getvalue() == "[ROUND 3] users 0-3: trained 160 examples, uploaded 6.0 MiB, 5.1 s\n"
    reporter.record(
        4,
        1,
        RoundResult(
            (1, 3), started=0.0, ended=1.0, examples=40, uploaded=2048, status="aborted: 1 survivors < threshold 2"
        ),
    )
    reporter.record(5, 1, RoundResult((1,), started=0.0, ended=0.5, examples=40, uploaded=4096))  # 4 cut short
    assert out.getvalue().splitlines()[1:] == [
        "[ROUND 4] user 1: trained 40 examples, uploaded 2.0 KiB, 1.0 s; aborted: 1 survivors < threshold 2",
        "[ROUND 5] user 1: trained 40 examples, uploaded 4.0 KiB, 0.5 s",
    ]


def test_a_network_run_prints_one_line_per_round(pki, tmp_path, certs, procs) -> None:
    server, address = harness.start_server(
        tmp_path,
        certs,
        tmp_path / "run",
        extra=["--rounds", "2", "--min-clients", "8", "--min-group-size", "2", "--stage-timeout", "30"],
    )
    procs.append(server)
    clients = harness.start_clients(tmp_path, certs, address, "0-7")
    procs.append(clients)
    assert clients.wait(timeout=180) == 0, clients.stderr()
    rounds = [line for line in clients.output if line.startswith("[ROUND")]
    assert [line.split("]")[0] for line in rounds] == ["[ROUND 0", "[ROUND 1"], clients.output
    assert all(" users 0-7: trained " in line and " uploaded " in line for line in rounds), rounds
    assert all("not completed" not in line for line in rounds), rounds
    # issue A: both sides say the enrolment (the client once all its users are in, the server per client)
    enrolled = [line for line in clients.output if line.startswith("ENROLLED")]
    assert len(enrolled) == 1 and enrolled[0].startswith("ENROLLED users 0-7 in run "), clients.output
    assert enrolled[0].rstrip().endswith("; waiting for the first round"), enrolled
    assert clients.output.index(enrolled[0]) < clients.output.index(rounds[0])
    said = [line.rstrip() for line in server.output if line.startswith("ENROLLED")]
    assert [line.split(" (client")[0] for line in said] == [f"ENROLLED {n} of 8 needed" for n in range(1, 8)] + [
        "ENROLLED 8 clients, 8 needed: enough to start rounds"
    ], server.output


def test_a_client_refuses_a_server_built_for_another_data_schema(tmp_path, certs, procs) -> None:
    """Issue 12, and issue A: the server's model is for histories of 10 items, these clients' data has 12: they
    are refused at enrolment (not at the first round, after a wait), say both schemas in one line and exit 1
    within seconds; the server prints one REFUSED line per client, naming it and the reason."""
    server, address = harness.start_server(
        tmp_path, certs, tmp_path / "run", extra=["--min-clients", "3"], name="schema"
    )
    procs.append(server)
    started = time.monotonic()
    clients = harness.start_clients(tmp_path, certs, address, "0-2", extra=["--maxlen", "12"])
    procs.append(clients)
    assert clients.wait(timeout=120) == 1, clients.stderr()
    assert time.monotonic() - started < 30  # the process's start (data, torch) and three refused enrolments
    stderr = clients.stderr()
    assert "Traceback" not in stderr and stderr.startswith("mrff client: error: "), stderr
    assert "data schema" in stderr, stderr
    assert "maxlen 10; this client: " in stderr and stderr.rstrip().endswith("maxlen 12"), stderr
    assert not [line for line in clients.output if line.startswith(("[ROUND", "ENROLLED"))], clients.output
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        refused = [line for line in server.output if line.startswith("REFUSED enrolment of client ")]
        if len(refused) >= 3:
            break
        time.sleep(0.2)
    assert sorted(line.split()[4].rstrip(":") for line in refused) == ["0", "1", "2"], server.output
    assert all("data schema" in line and "maxlen 10" in line for line in refused), refused
    assert not [line for line in server.output if line.startswith("ENROLLED")], server.output


def test_a_client_started_before_its_server_waits_for_it(tmp_path, certs, procs) -> None:
    """Issue C: nothing listens yet; the client keeps trying for its --retry-timeout (here 60 s, past the old 10 s
    first-contact limit), says so in one line, and plays the run once the server is up."""
    with socket.socket() as probe:  # a free port, closed again: connection refused until the server binds it
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    clients = harness.start_clients(tmp_path, certs, address, "0-7", name="early")  # 8: k, t for c_max = 2
    procs.append(clients)
    line = clients.wait_line("WAITING", timeout=60)
    assert line.startswith(f"WAITING for the server at {address} (connection refused); retrying for up to 60 s"), line
    time.sleep(max(0.0, 12.0 - (time.monotonic() - started)))  # longer than the old 10 s limit
    assert clients.popen.poll() is None, clients.stderr()  # still waiting
    server, _ = harness.start_server(
        tmp_path,
        certs,
        tmp_path / "run",
        address=address,
        extra=["--rounds", "1", "--min-clients", "8", "--min-group-size", "2"],
    )
    procs.append(server)
    assert clients.wait(timeout=90) == 0, clients.stderr()
    assert server.wait(timeout=60) == 0, server.stderr()
    said = [line for line in clients.output if line.startswith(("WAITING", "SERVER"))]
    assert len(said) == 2 and said[1].startswith(f"SERVER at {address} answers again after "), said

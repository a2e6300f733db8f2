"""Only clients that trust the server's CA, hold a credential from the identity authority for their
own id and key, and present a client certificate (mutual TLS, the default) can join; clients refuse a server
whose signed parameters do not verify, and refuse to start without a credential of their authority."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import grpc
import pytest

from mrff_secure.secagg import primitives
from mrff_secure.secagg.identity import ClientCredential, issue_credential
from mrff_secure.wire import signing
from mrff_secure.wire.v1 import coordinator_pb2_grpc as pb_grpc

from . import enrolment, harness

pytestmark = pytest.mark.timeout(240)


def enrol(
    address: str,
    credentials,
    authority_folder,
    client: int = 900,
    *,
    credential_id: int | None = None,
    key=None,
    credential_key=None,
):
    """Enrol `key` (default: a fresh one) as `client`, with a credential from the authority of the PKI
    whose certificates folder is `authority_folder` (None: none) issued for `credential_id` (default: the same id) and for the public
    key of `credential_key` (default: the enrolled key)."""
    channel = grpc.secure_channel(address, credentials) if credentials is not None else grpc.insecure_channel(address)
    key = key if key is not None else primitives.generate_identity_key()
    public = primitives.identity_public_bytes(key)
    credential = b""
    if authority_folder is not None:
        authority = signing.load_private_key(harness.authority_of(authority_folder) / "identity-ca.key")
        certified = public if credential_key is None else primitives.identity_public_bytes(credential_key)
        credential = issue_credential(
            authority, client if credential_id is None else credential_id, certified
        ).to_bytes()
    try:
        stub = pb_grpc.CoordinatorStub(channel)
        return stub.Enrol(enrolment.enrol_request(stub, key, client, credential), timeout=5)
    finally:
        channel.close()


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_tls_credentials_and_signed_parameters(tmp_path, certs, procs) -> None:
    stranger = harness.make_pki(tmp_path / "stranger")  # another CA, identity authority and signing key
    run_dir = tmp_path / "run"
    server, address = harness.start_server(
        tmp_path,
        certs,
        run_dir,
        extra=["--rounds", "1", "--min-clients", "3", "--train-timeout", "5", "--stage-timeout", "5"],
    )
    procs.append(server)
    good_ca = harness.client_tls(certs)
    wrong_ca = grpc.ssl_channel_credentials((stranger / "ca.crt").read_bytes())

    assert code_of(lambda: enrol(address, wrong_ca, certs)) == grpc.StatusCode.UNAVAILABLE  # certificate refused
    assert code_of(lambda: enrol(address, None, certs)) == grpc.StatusCode.UNAVAILABLE  # plaintext to a TLS port
    # W1: the server binds no id to a key without the identity authority's credential for exactly that pair
    assert code_of(lambda: enrol(address, good_ca, None)) == grpc.StatusCode.PERMISSION_DENIED
    assert code_of(lambda: enrol(address, good_ca, stranger)) == grpc.StatusCode.PERMISSION_DENIED
    assert (
        code_of(lambda: enrol(address, good_ca, certs, client=902, credential_id=903))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    certified_elsewhere = primitives.generate_identity_key()  # a genuine credential, but for another key
    assert (
        code_of(lambda: enrol(address, good_ca, certs, client=902, credential_key=certified_elsewhere))
        == grpc.StatusCode.PERMISSION_DENIED
    )
    assert enrol(address, good_ca, certs, client=901).session_token  # the right CA and credential do join
    records = harness.audit_records(run_dir)
    refusals = [r for r in records if r["type"] == "rejected" and r["method"] == "Enrol"]
    assert [r["status"] for r in refusals] == ["PERMISSION_DENIED"] * 4
    assert "no readable credential" in refusals[0]["reason"]
    assert "not the identity authority's statement for client 900" in refusals[1]["reason"]
    assert "not the identity authority's statement for client 902" in refusals[2]["reason"]
    assert "certifies another identity key" in refusals[3]["reason"]
    enrolled = [r for r in records if r["type"] == "enrolled"]
    assert [r["client"] for r in enrolled] == [901]  # only the certified client was bound, with its credential
    assert (
        ClientCredential.from_bytes(bytes.fromhex(enrolled[0]["credential"])).identity_public_key.hex()
        == enrolled[0]["identity_key"]
    )

    # Started together to save time. Clients 2-4 hold another signing key: they refuse the server at
    # enrolment (its signed deployment does not verify; 901 above never answers and is dropped with them).
    # Client 1 trusts another identity authority than the one that certified it: it refuses to start.
    no_ca = harness.start_clients(
        tmp_path, certs, address, "0", name="wrong-ca", extra=["--ca", str(stranger / "ca.crt"), "--retry-timeout", "3"]
    )
    other_authority = harness.start_clients(
        tmp_path,
        certs,
        address,
        "1",
        name="other-authority",
        extra=["--identity-ca", str(stranger / "identity-ca.pub")],
    )
    forged = harness.start_clients(
        tmp_path,
        certs,
        address,
        "2-4",
        name="wrong-signing-key",
        extra=["--signing-pub", str(stranger / "signing.pub")],
    )
    procs += [no_ca, other_authority, forged]
    assert no_ca.wait(timeout=90) == 1  # a runtime failure, named at once (tests/network/test_client_errors.py)
    assert "the server's certificate is not signed by" in no_ca.stderr(), no_ca.stderr()
    assert other_authority.wait(timeout=90) == 2
    assert "is not the identity authority's credential for user 1" in other_authority.stderr()
    assert forged.wait(timeout=120) == 1  # the server is refused at run time: exit 1
    # at enrolment, before any round: the signed deployment of the enrolment reply does not verify
    assert "refusing the server" in forged.stderr() and "does not verify" in forged.stderr()
    assert server.wait(timeout=120) == 1, server.stderr()  # its one round never completed: the run is unfinished
    rounds = harness.round_records(run_dir)
    assert len(rounds) == 1 and rounds[0]["type"] == "round_aborted"  # nobody trusted it: nothing released


def test_a_client_without_a_credential_refuses_to_start(tmp_path, certs) -> None:
    state = tmp_path / "bare-state"
    proc = harness.Proc(
        [
            "client",
            "--address",
            "127.0.0.1:9",
            "--users",
            "3",
            "--certs",
            str(certs),
            "--state-dir",
            str(state),
            "--retry-timeout",
            "2",
        ]
        + harness.DATA_ARGS,
        tmp_path / "bare.log",
    )
    assert proc.wait(timeout=60) == 2
    assert "credential.bin is missing: run `mrff certs issue-client` for user 3" in proc.stderr()
    proc.stop()


def _rotate_key(state, user: int) -> None:
    (state / f"user-{user}" / "identity.key").unlink()
    client_store(state, user).identity_key()  # a new key; the credential still certifies the old one


def _copy_credential_of_user_4(state, user: int) -> None:
    (state / f"user-{user}" / "credential.bin").write_bytes((state / "user-4" / "credential.bin").read_bytes())


def _truncate(state, user: int) -> None:
    path = state / f"user-{user}" / "credential.bin"
    path.write_bytes(path.read_bytes()[:-1])


def client_store(state, user: int):
    from client.state import UserStore

    return UserStore(state, user)


@pytest.mark.parametrize(
    "damage, message",
    [
        (_rotate_key, "credential.bin certifies another identity key than"),
        (_copy_credential_of_user_4, "is not the identity authority's credential for user 3: it certifies client 4"),
        (_truncate, "credential.bin is not a readable credential"),
    ],
)
def test_a_client_refuses_to_start_with_a_credential_for_another_key_or_id(tmp_path, certs, damage, message) -> None:
    state = tmp_path / "state"
    harness.issue_credentials(certs, "3-4", state)
    damage(state, 3)
    proc = harness.Proc(
        [
            "client",
            "--address",
            "127.0.0.1:9",
            "--users",
            "3-4",
            "--certs",
            str(certs),
            "--state-dir",
            str(state),
            "--retry-timeout",
            "2",
        ]
        + harness.DATA_ARGS,
        tmp_path / "c.log",
    )
    assert proc.wait(timeout=60) == 2
    assert message in proc.stderr() and "user-3" in proc.stderr()
    assert "unreachable" not in proc.stderr()  # refused before it tried the network
    proc.stop()


def _mrff_in_process(*argv: str) -> SimpleNamespace:
    """`mrff ARGV` in this process (the same `main` the program runs; no interpreter start per call): its exit
    code and what it wrote to stderr."""
    from mrff_secure.app import cli

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(argv))
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
    return SimpleNamespace(returncode=code, stderr=err.getvalue())


def test_issue_client_refuses_to_rebind_an_id_without_force(tmp_path, certs) -> None:
    from cryptography.hazmat.primitives import serialization

    def pub(name: str):
        path = tmp_path / name
        key = primitives.generate_identity_key()
        path.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        return path

    out = tmp_path / "cred.bin"

    def issue(key_file, *extra):
        return _mrff_in_process(
            *[
                "certs",
                "issue-client",
                "--authority",
                str(harness.authority_of(certs)),
                "--client-id",
                "5",
                "--identity-pub",
                str(key_file),
                "--out",
                str(out),
                *extra,
            ]
        )

    first, second = pub("a.pem"), pub("b.pem")
    assert issue(first).returncode == 0
    assert issue(first).returncode == 0  # the same binding again is fine
    refused = issue(second)
    assert refused.returncode == 2 and "needs --force" in refused.stderr
    assert (
        ClientCredential.from_bytes(out.read_bytes()).identity_public_key
        == signing.load_public_key(first).public_bytes_raw()
    )  # untouched
    assert issue(second, "--force").returncode == 0
    assert (
        ClientCredential.from_bytes(out.read_bytes()).identity_public_key
        == signing.load_public_key(second).public_bytes_raw()
    )

    # the other refusals: no authority key in --authority, a file that is no Ed25519 public key, an id the server
    # refuses
    assert "no identity authority key at" in issue(first, "--authority", str(tmp_path)).stderr
    (tmp_path / "garbage.pem").write_text("not a key")
    assert "client's identity public key" in issue(tmp_path / "garbage.pem").stderr
    big = _mrff_in_process(
        *[
            "certs",
            "issue-client",
            "--authority",
            str(harness.authority_of(certs)),
            "--client-id",
            str(2**31),
            "--identity-pub",
            str(first),
            "--out",
            str(tmp_path / "x.bin"),
        ]
    )
    assert big.returncode == 2 and "is outside" in big.stderr and not (tmp_path / "x.bin").exists()


def test_issue_client_bulk_form_refuses_to_rebind_without_force(tmp_path, certs) -> None:
    state = tmp_path / "state"

    def cli(*args):
        return _mrff_in_process(*args)

    def bulk(*extra):
        return cli(
            "certs",
            "issue-client",
            "--authority",
            str(harness.authority_of(certs)),
            "--users",
            "0-2",
            "--state-dir",
            str(state),
            *extra,
        )

    assert bulk().returncode == 0
    authority = certs / "identity-ca.pub"
    from mrff_secure.pki import load_authority_public_key

    for user in range(3):
        client_store(state, user).credential(load_authority_public_key(authority))  # made keys, certified them
    assert oct((state / "user-0" / "identity.key").stat().st_mode & 0o777) == "0o600"
    assert bulk().returncode == 0  # the same bindings again are fine
    _rotate_key(state, 1)
    before = {u: (state / f"user-{u}" / "credential.bin").read_bytes() for u in range(3)}
    refused = bulk()
    assert refused.returncode == 2 and "user-1/credential.bin binds client 1 to another identity key" in refused.stderr
    assert "needs --force" in refused.stderr
    assert {u: (state / f"user-{u}" / "credential.bin").read_bytes() for u in range(3)} == before  # nothing written
    assert bulk("--force").returncode == 0
    client_store(state, 1).credential(load_authority_public_key(authority))

    # the deployment form: the client makes its key and exports the public key; the authority certifies it
    made = cli("client-key", "--users", "7", "--state-dir", str(state), "--out-dir", str(tmp_path / "pubs"))
    assert made.returncode == 0, made.stderr
    assert b"PRIVATE" not in (tmp_path / "pubs" / "user-7.pub").read_bytes()
    single = cli(
        "certs",
        "issue-client",
        "--authority",
        str(harness.authority_of(certs)),
        "--client-id",
        "7",
        "--identity-pub",
        str(tmp_path / "pubs" / "user-7.pub"),
        "--out",
        str(state / "user-7" / "credential.bin"),
    )
    assert single.returncode == 0, single.stderr
    client_store(state, 7).credential(load_authority_public_key(authority))


def test_a_resumed_server_keeps_every_binding_of_the_run(tmp_path, certs, procs) -> None:
    """Bindings made after the last checkpoint survive a crash (from the audit log): a second key for an
    enrolled id is refused by the resumed server even with a credential the authority issued for it."""
    run_dir = tmp_path / "run"
    server, address = harness.start_server(tmp_path, certs, run_dir, extra=["--min-clients", "50"])
    procs.append(server)
    channel = harness.client_tls(certs)
    first = primitives.generate_identity_key()
    assert enrol(address, channel, certs, client=7, key=first).session_token
    server.kill()  # no round ran: the checkpoint on disk predates the enrolment
    resumed, address = harness.start_server(tmp_path, certs, run_dir, resume=True, name="resumed")
    procs.append(resumed)
    rekeyed = primitives.generate_identity_key()  # re-certified by the authority (issue-client --force)
    assert code_of(lambda: enrol(address, channel, certs, client=7, key=rekeyed)) == grpc.StatusCode.PERMISSION_DENIED
    assert enrol(address, channel, certs, client=7, key=first).session_token  # the bound key still joins
    refusal = [r for r in harness.audit_records(run_dir) if r["type"] == "rejected"][-1]
    assert (refusal["method"], refusal["status"]) == ("Enrol", "PERMISSION_DENIED")
    assert "already bound to another identity key" in refusal["reason"]


def test_mutual_tls_requires_a_client_certificate(tmp_path, certs, procs) -> None:
    server, address = harness.start_server(tmp_path, certs, tmp_path / "run", extra=["--min-clients", "50"])
    procs.append(server)
    ca = (certs / "ca.crt").read_bytes()
    without = grpc.ssl_channel_credentials(ca)
    with_cert = grpc.ssl_channel_credentials(
        ca, (certs / "client.key").read_bytes(), (certs / "client.crt").read_bytes()
    )
    assert code_of(lambda: enrol(address, without, certs)) == grpc.StatusCode.UNAVAILABLE
    assert enrol(address, with_cert, certs).session_token

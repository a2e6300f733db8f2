"""W19: the server's transport takes no message larger than the run's largest legitimate one, and each
method refuses (RESOURCE_EXHAUSTED) anything larger than that method can be, before parsing it; oversized
Enrol calls from outsiders neither grow the server's memory nor stop it serving a legitimate round."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import grpc
import pytest

from mrff_secure.config import ModelConfig
from mrff_secure.federation.client_update import build_global
from mrff_secure.round.spec import RoundSpec
from mrff_secure.round.update_vector import UpdateLayout
from mrff_secure.secagg import primitives
from mrff_secure.secagg.identity import issue_credential
from mrff_secure.wire import signing
from mrff_secure.wire.v1 import coordinator_pb2 as pb
from mrff_secure.wire.v1 import coordinator_pb2_grpc as pb_grpc
from server.message_caps import MARGIN_BYTES, MessageCaps

from . import enrolment, harness

pytestmark = pytest.mark.timeout(300)
FLOOD_BYTES = 48 << 20  # each oversized Enrol; the old receive cap (4 x 64 MiB) let all four in whole


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory (VmHWM), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def expected_caps(attribute_dim: int) -> MessageCaps:
    """The caps the server must compute for the harness's data, this model and the default round spec."""
    config = ModelConfig(attribute_dim=attribute_dim, dropout=0.0, maxlen=harness.MAXLEN)
    model, _ = build_global(config, harness.data(), 0)
    spec = RoundSpec(
        local_steps=1,
        optimizer="adam",
        lr=0.1,
        dp_mode="off",
        clip=1.0,
        noise_multiplier=0.0,
        min_survivors=1,
        min_group_size=2,
        mechanism="discrete_gaussian",
        modulus_bits=32,
        count_cap=harness.MAXLEN,
    )
    return MessageCaps.for_run(UpdateLayout.from_model(model), spec, num_neighbours=None)


def listening_caps(line: str) -> tuple[int, int]:
    match = re.search(r"largest request (\d+) bytes, Enrol (\d+)", line)
    assert match, line
    return int(match.group(1)), int(match.group(2))


def enrol_request(stub: pb_grpc.CoordinatorStub, certs: Path, client: int, *, padding: int = 0) -> pb.EnrolRequest:
    """A genuine enrolment answering a fresh challenge of the server, its credential followed by `padding` zeros."""
    key = primitives.generate_identity_key()
    public = primitives.identity_public_bytes(key)
    authority = signing.load_private_key(harness.authority_of(certs) / "identity-ca.key")
    credential = issue_credential(authority, client, public).to_bytes() + bytes(padding)
    return enrolment.enrol_request(stub, key, client, credential)


def test_oversized_enrols_are_refused_early_and_a_round_still_passes(tmp_path, certs, procs) -> None:
    run_dir = tmp_path / "run"
    server, address = harness.start_server(
        tmp_path,
        certs,
        run_dir,
        extra=[
            "--rounds",
            "1",
            "--min-clients",
            "4",
            "--min-group-size",
            "2",
            "--threshold",
            "3",
            "--train-timeout",
            "60",
        ],
    )
    procs.append(server)
    line = next(text for text in server.output if text.startswith("LISTENING"))
    receive, enrol_cap = listening_caps(line)
    want = expected_caps(4)
    assert (receive, enrol_cap) == (want.receive, want.enrol)  # computed from the run, not a constant
    assert enrol_cap <= 8 * 1024 and receive < (1 << 20)  # a few KiB; this tiny model's update: tens of KiB
    assert want.submit > want.enrol + MARGIN_BYTES

    channel = grpc.secure_channel(
        address, harness.client_tls(certs), options=[("grpc.max_send_message_length", 64 << 20)]
    )
    stub = pb_grpc.CoordinatorStub(channel)
    # over Enrol's cap, under the transport's: the servicer refuses it by name, before parsing, and audits it
    with pytest.raises(grpc.RpcError) as info:
        stub.Enrol(enrol_request(stub, certs, 700, padding=enrol_cap), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"over this run's limit of {enrol_cap} bytes for Enrol" in info.value.details()
    rejected = [r for r in harness.audit_records(run_dir) if r["type"] == "rejected"]
    assert [(r["method"], r["status"]) for r in rejected] == [("Enrol", "RESOURCE_EXHAUSTED")]

    # four 48 MiB Enrols at once: gRPC refuses each over the transport's cap; the server's memory stays flat
    before = peak_rss_mib(server.pid)
    codes: list[grpc.StatusCode] = []

    def flood(i: int) -> None:
        try:
            stub.Enrol(enrol_request(stub, certs, 800 + i, padding=FLOOD_BYTES), timeout=60)
        except grpc.RpcError as exc:
            codes.append(exc.code())

    threads = [threading.Thread(target=flood, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grown = peak_rss_mib(server.pid) - before
    print(f"server peak memory {before:.0f} MiB before, +{grown:.0f} MiB after four {FLOOD_BYTES >> 20} MiB Enrols")
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 4
    # the old cap let all four in whole (+405 MiB measured); gRPC's flow-control buffers stay far below that
    assert grown < 2 * FLOOD_BYTES / (1 << 20), f"the server's peak memory grew by {grown:.0f} MiB"
    # it keeps serving: a whole round with four real clients
    channel.close()
    clients = harness.start_clients(tmp_path, certs, address, "0-3", extra=["--corrupt-neighbours", "1"])
    procs.append(clients)
    assert server.wait(timeout=200) == 0, server.stderr()
    rounds = harness.round_records(run_dir)
    assert [r["type"] for r in rounds] == ["round"], (rounds, "".join(clients.output), clients.stderr()[-3000:])
    assert rounds[0]["phases"]["update"]["survivors"] == [0, 1, 2, 3]


def test_the_cap_follows_the_model(tmp_path, certs, procs) -> None:
    """A larger model: a larger computed cap (its update vector is larger), Enrol's the same."""
    server, _ = harness.start_server(
        tmp_path, certs, tmp_path / "run", extra=["--min-clients", "50", "--attribute-dim", "8"], name="big"
    )
    procs.append(server)
    receive, enrol_cap = listening_caps(next(t for t in server.output if t.startswith("LISTENING")))
    small, large = expected_caps(4), expected_caps(8)
    assert receive == large.receive > small.receive and enrol_cap == small.enrol


def test_every_method_of_the_service_has_a_cap() -> None:
    """A method added to the protocol without a cap would fail every call (the merge of the enrolment
    challenge did): each RPC the service declares has its own cap, within the transport's."""
    caps = expected_caps(4)
    (service,) = pb.DESCRIPTOR.services_by_name.values()
    for method in service.methods:
        assert 0 < caps.of(method.name) <= caps.receive, method.name

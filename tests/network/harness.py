"""Real processes on 127.0.0.1 for the network tests: `mrff server` and `mrff client` started with
subprocess, addressed by the port the server reports, and stopped by PID (the process class and the PKI
helpers are the audit's network cell's, attacks/network_cell.py, re-exported here)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from attacks.network_cell import ChildProcess, authority_of, child_env, issue_credentials, make_pki
from mrff_secure.config import ModelConfig
from mrff_secure.data import make_synthetic

__all__ = ["Proc", "authority_of", "issue_credentials", "make_pki"]

ROOT = Path(__file__).resolve().parents[2]
USERS = 12
MAXLEN = 10
DATA_ARGS = ["--dataset", "synthetic", "--synthetic-users", str(USERS), "--maxlen", str(MAXLEN), "--data-seed", "0"]
MODEL_ARGS = ["--attribute-dim", "4", "--dropout", "0.0"]
# The test servers run with tiny groups (12 users) and, unless a test says otherwise, DP off (the tests of
# the protocol check exact sums): their clients' policy accepts a minimum group size of 2 and DP off, which
# is weaker than the safe defaults (tests/network/test_client_ledger.py tests those), so it says so.
CLIENT_POLICY = [
    "--min-group-size",
    "2",
    "--allow-dp-off",
    "--min-noise-multiplier",
    "0",
    "--max-epsilon",
    "inf",
    "--accept-weaker-privacy",
]
SERVER_DP_OFF = ["--dp", "off"]  # a network server's default is distributed DP


def data():
    return make_synthetic(num_users=USERS, maxlen=MAXLEN, seed=0)


def model_config() -> ModelConfig:
    return ModelConfig(attribute_dim=4, dropout=0.0, maxlen=MAXLEN)


_env = child_env  # shared with the audit's network cell (attacks/network_cell.py)


class Proc(ChildProcess):
    """`mrff ARGS...` (python -m mrff_secure.app.cli) as a child process: `ChildProcess`."""

    def __init__(self, args: list[str], log: Path) -> None:
        super().__init__(["-m", "mrff_secure.app.cli", *args], log, cwd=ROOT)


def start_server(
    tmp: Path,
    certs: Path,
    run_dir: Path,
    *,
    extra: list[str] = (),
    resume: bool = False,
    address: str = "127.0.0.1:0",
    name: str = "server",
) -> tuple[Proc, str]:
    args = ["server", "--address", address, "--certs", str(certs), "--linger", "2"]
    args += (
        ["--run-dir", str(run_dir), "--resume"] + list(extra)  # resume: only deployment options ([network])
        if resume
        else ["--run-dir", str(run_dir)]
        + DATA_ARGS
        + MODEL_ARGS
        + ([] if "--dp" in extra else SERVER_DP_OFF)
        + list(extra)
    )
    proc = Proc(args, tmp / f"{name}.log")
    line = proc.wait_line("LISTENING", timeout=90)
    return proc, line.split()[1]


def client_tls(certs: Path):
    """The channel credentials of a client of the PKI `certs`: its CA and its client certificate (mutual TLS,
    the servers' default)."""
    import grpc

    return grpc.ssl_channel_credentials(
        (certs / "ca.crt").read_bytes(), (certs / "client.key").read_bytes(), (certs / "client.crt").read_bytes()
    )


def start_clients(
    tmp: Path,
    certs: Path,
    address: str,
    users: str,
    *,
    seed: int = 7,
    extra: list[str] = (),
    name: str = "clients",
    policy: list[str] | None = None,
) -> Proc:
    """`policy`: the clients' policy flags (default CLIENT_POLICY, the protocol tests' permissive one)."""
    issue_credentials(certs, users, tmp / "state")
    args = [
        "client",
        "--address",
        address,
        "--users",
        users,
        "--certs",
        str(certs),
        "--state-dir",
        str(tmp / "state"),
        "--client-seed",
        str(seed),
        "--retry-timeout",
        "60",
    ] + DATA_ARGS
    args += (CLIENT_POLICY if policy is None else list(policy)) + list(extra)  # a test's own flags come last
    return Proc(args, tmp / f"{name}-{users}.log")


def audit_records(run_dir: Path) -> list[dict]:
    """The run's records without the head signatures (tests of those: test_audit_log.py)."""
    path = run_dir / "audit.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("type") != "head_signature"]


def wait_for_record(run_dir: Path, predicate, timeout: float, procs: list[Proc] = ()) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in audit_records(run_dir):
            if predicate(record):
                return record
        time.sleep(0.2)
    logs = "\n".join(p.stderr()[-2000:] for p in procs)
    raise AssertionError(f"no matching audit record within {timeout}s; logs:\n{logs}")


def round_records(run_dir: Path) -> list[dict]:
    return [r for r in audit_records(run_dir) if r["type"] in ("round", "round_aborted")]

"""Real processes on 127.0.0.1 for the network tests: `mrff server` and `mrff client` started with
subprocess, addressed by the port the server reports, and stopped by PID."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mrff_secure.config import ModelConfig
from mrff_secure.data import make_synthetic

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


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class Proc:
    """A child process whose stdout lines are collected by a reader thread."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = open(log, "w")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "mrff_secure.app.cli"] + args,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self.output.append(line)
            self.lines.put(line)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_line(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.popen.poll() is not None and self.lines.empty():
                    break
                continue
            if line.startswith(prefix):
                return line.strip()
        raise AssertionError(f"no line starting with {prefix!r} within {timeout}s; stderr: {self.stderr()[-3000:]}")

    def stderr(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)


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


def authority_of(certs: Path) -> Path:
    """The identity authority's folder of the PKI whose certificates folder is `certs` (`make_pki`)."""
    return certs.parent / f"{certs.name}-authority"


def make_pki(certs: Path) -> Path:
    """A development PKI as an operator makes it: `certs` (TLS, signing key, the authority's public key) and
    the identity authority apart, in authority_of(certs). Returns `certs`."""
    from mrff_secure.pki import make_authority, make_dev_pki, publish_authority

    make_dev_pki(certs)
    publish_authority(make_authority(authority_of(certs)), certs)
    return certs


def issue_credentials(certs: Path, users: str, state_dir: Path) -> None:
    """The identity authority certifies the users' identity keys (made in their state folders if missing)."""
    from client.process import parse_users
    from mrff_secure.pki import AuthorityPaths, issue_state_credentials

    issue_state_credentials(AuthorityPaths(authority_of(certs)), parse_users(users), state_dir)


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
        "--server",
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

"""The audit's network cell: a lying server against real client processes over real gRPC on 127.0.0.1.

One `mrff server` with the `network-cell` lie patched in (`attacks.hostile_server`, its CELL_* schedule) and
two `mrff client` processes (six logical clients each, the real client code with its DEFAULT policy and its
own privacy ledger, client/ledger.py), mutual TLS as deployed by default, distributed DP, a tiny synthetic
data set. The server plays three lies in one run:

- freeze-and-difference (W12): rounds 0 and 1 are summed, reported aborted and the model frozen, so round 1
  asks every client for the release of round 0's input again (the difference of the two sums, a client
  left out of one, would isolate its input or its noise).
- evaluation-differencing (W14): rounds 2 and 3 end with federated evaluations of two models that differ in
  one parameter; the difference of the two evaluation sums is what that parameter does to the clients'
  held-out scores.
- relabelled-replay (W12): round 3 is announced again under a new run-id label (the same round, a "new run").

Each lie is judged from what the server actually obtained (the sums it unmasked, in its own audit log) and
what each client's ledger holds: "refused" (the lie's release was not obtained; the client's refusal line is
the evidence), "accounted" (every sum obtained holds releases the ledger recorded, and the ledger's epsilon
equals the epsilon of the server's own accountant after the lie's rounds) or "leaked" (a sum obtained that the
ledger did not record, or a ledger epsilon below the server's).

The processes are shared with the network tests (tests/network/harness.py): `ChildProcess`, `make_pki`,
`issue_credentials`.
"""

from __future__ import annotations

import json
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from attacks.hostile_server import CELL_EVALUATED_ROUNDS, CELL_FROZEN_ROUNDS, CELL_RELABELLED_ROUND, CELL_ROUNDS
from client.ledger import ClientLedger
from mrff_secure.dp.accounting import json_epsilon
from mrff_secure.round.accountant import RoundAccountant

SOURCE_ROOT = Path(__file__).resolve().parents[1]  # the folder holding attacks/, client/, server/, mrff_secure/

USERS = 12
CLIENT_PROCESSES = ("0-5", "6-11")
MAXLEN = 10
DATA_ARGS = ["--dataset", "synthetic", "--synthetic-users", str(USERS), "--maxlen", str(MAXLEN), "--data-seed", "0"]
MODEL_ARGS = ["--attribute-dim", "4", "--dropout", "0.0"]
NOISE_MULTIPLIER = 6.0  # the four rounds and two evaluations cost epsilon 3.2, under the clients' default cap (10)
# --train-timeout: round 0's first stage (12 clients' first training) took up to 4.3 s on 2 busy cores; the
# relabelled round, which every client refuses, waits hostile_server.CELL_RELABEL_WAIT_S only.
SERVER_ARGS = ["--min-clients", str(USERS), "--stage-timeout", "8", "--train-timeout", "6", "--linger", "1"]
SERVER_ARGS += ["--rounds", str(CELL_ROUNDS), "--dp", "distributed", "--noise-multiplier", str(NOISE_MULTIPLIER)]
SERVER_ARGS += ["--federated-eval-every", "1"]  # the lie keeps the evaluations of CELL_EVALUATED_ROUNDS only
RELABEL_REFUSAL = "a relabelled replay is not a new run"
EVALUATION_ZEROS = "zeros for the federated evaluation"
LIES = {
    "freeze-and-difference": "rounds 0 and 1 summed, reported aborted, the model frozen: round 1 asks for round 0's "
    "input again (W12)",
    "evaluation-differencing": "federated evaluations of two models that differ in one parameter, rounds 2 and 3 (W14)",
    "relabelled-replay": "round 3 announced again under a new run-id label (W12)",
}
REL_TOLERANCE = 1e-9  # the two accountants run the same code on the same releases


class NetworkCellError(RuntimeError):
    """The cell could not be played (a process did not start or did not finish in time): no verdict."""


def child_env() -> dict[str, str]:
    """The environment of a child process: this source tree first on the path, one thread per process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SOURCE_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


class ChildProcess:
    """`python ARGS...` as a child process whose stdout lines are collected by a reader thread (stderr to `log`);
    stopped by its PID."""

    def __init__(self, args: list[str], log: Path, *, cwd: Path = SOURCE_ROOT) -> None:
        self.log: IO[str] = open(log, "w")
        self.popen = subprocess.Popen(
            [sys.executable, *args], stdout=subprocess.PIPE, stderr=self.log, text=True, cwd=cwd, env=child_env()
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
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
    from mrff_secure.checks import parse_users
    from mrff_secure.pki import AuthorityPaths, issue_state_credentials

    issue_state_credentials(AuthorityPaths(authority_of(certs)), parse_users(users), state_dir)


# ---------------------------------------------------------------------------------------------- judging
def _audit_records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "audit.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_finished(run_dir: Path) -> bool:
    """The server has recorded the end of the run (read while it writes: a line being written is skipped)."""
    path = run_dir / "audit.jsonl"
    for line in path.read_text().splitlines() if path.exists() else ():
        try:
            if json.loads(line).get("type") == "run_finished":
                return True
        except ValueError:
            continue
    return False


def _obtained(record: dict[str, Any], user: int) -> set[str]:
    """The phases of a round whose sum the server unmasked with `user`'s masked input in it."""
    phases = {
        label
        for label, phase in record.get("phases", {}).items()
        if label != "evaluation" and user in phase.get("survivors", ())
    }
    evaluation = record.get("evaluation") or {}
    if evaluation.get("available") and user in record["phases"].get("evaluation", {}).get("survivors", ()):
        phases.add("evaluation")
    return phases


def _server_epsilon(record: dict[str, Any]) -> float:
    value = record["epsilon"]["epsilon"]
    return math.inf if value == "inf" else float(value)


def _ledger_epsilon(ledger: ClientLedger, run_id: str, last_round: int) -> float:
    """The epsilon of the ledger's releases of `run_id` up to round `last_round` (what the client had spent when
    the lie's rounds ended)."""
    accountant = RoundAccountant(delta=ledger.delta)
    for entry in ledger.entries:
        if entry.run_id == run_id and entry.round_id <= last_round:
            accountant.step(release=entry.release)
    return accountant.epsilon()


def _line_of(stderr: str, *needles: str) -> str | None:
    """The first line of a client log containing every one of `needles`, if any."""
    for line in stderr.splitlines():
        if all(needle in line for needle in needles):
            return line.strip()
    return None


def _judge(
    rounds: list[dict[str, Any]],
    key_rounds: tuple[int, ...],
    ledgers: dict[int, ClientLedger],
    run_id: str,
    stderr: str,
    *,
    key_phase: str | None = None,
) -> dict[str, Any]:
    """One lie's outcome over the rounds it played (`rounds`: their server records, in order). `key_rounds`: the
    rounds whose releases the lie asks for (the second release of the same input; the evaluations), `key_phase`
    the phase if only one counts. A sum the server unmasked holds a client's data unless the client said it sent
    zeros in it (an evaluation its policy keeps its scores out of)."""
    leaks: list[str] = []
    zeros: dict[tuple[int, int, str], str] = {}  # (user, round, phase) -> the client's line
    epsilons: dict[int, float] = {}
    last_round = rounds[-1]["round"]
    server_epsilon = _server_epsilon(rounds[-1])
    for user, ledger in ledgers.items():
        for record in rounds:
            r = record["round"]
            recorded = {e.phase for e in ledger.released(run_id, r)}
            for phase in sorted(_obtained(record, user) - recorded):
                zero_line = (
                    _line_of(stderr, f"user {user}: round {r}: ", EVALUATION_ZEROS) if phase == "evaluation" else None
                )
                if zero_line is not None:
                    zeros[user, r, phase] = zero_line  # its noise share and zeros: nothing of its data
                else:
                    leaks.append(f"user {user}: the server unmasked its {phase} of round {r}; its ledger has no entry")
        epsilons[user] = _ledger_epsilon(ledger, run_id, last_round)
    low = {u: e for u, e in epsilons.items() if e < server_epsilon * (1 - REL_TOLERANCE)}
    for user, eps in sorted(low.items()):
        leaks.append(f"user {user}: ledger epsilon {eps:.6g} below the server's accountant {server_epsilon:.6g}")
    by_round = {record["round"]: record for record in rounds}
    key_obtained = sorted(  # the lie's releases the server got with some client's data in them
        {
            (r, phase)
            for r in key_rounds
            for user in ledgers
            for phase in _obtained(by_round[r], user)
            if (key_phase is None or phase == key_phase) and (user, r, phase) not in zeros
        }
    )
    client_epsilon = max(epsilons.values())
    result: dict[str, Any] = {
        "rounds": [record["round"] for record in rounds],
        "client_epsilon": json_epsilon(client_epsilon),  # the largest of the clients' ledgers
        "client_epsilon_min": json_epsilon(min(epsilons.values())),
        "server_epsilon": json_epsilon(server_epsilon),
        "releases_obtained": [  # (round, phase) of every sum unmasked with some client's masked input in it
            list(pair)
            for pair in sorted({(rec["round"], p) for rec in rounds for u in ledgers for p in _obtained(rec, u)})
        ],
    }
    refusals = [line for r in key_rounds if (line := _line_of(stderr, f"round {r}", "refus")) is not None] + sorted(
        set(zeros.values())
    )
    if leaks:
        result.update(outcome="leaked", evidence=leaks[:5], leaks=len(leaks))
    elif not key_obtained:  # refused, if the clients said so; else the lie was not played out
        result.update(
            outcome="refused" if refusals else "inconclusive",
            evidence=refusals[:3] or ["no sum of the lie's rounds was unmasked, and no client said it refused"],
        )
    else:
        matching = sum(1 for e in epsilons.values() if math.isclose(e, server_epsilon, rel_tol=REL_TOLERANCE))
        result.update(
            outcome="accounted",
            evidence=[
                f"the server unmasked {', '.join(f'round {r} {p}' for r, p in key_obtained)}; every client's ledger "
                f"records each of its releases in them, and {matching} of {len(ledgers)} ledgers say epsilon "
                f"{client_epsilon:.6g} after round {last_round} = the server's own accountant {server_epsilon:.6g}"
            ]
            + sorted(set(zeros.values()))[:3],
            ledgers_matching=matching,
        )
        if matching != len(ledgers):  # above the server's: the client counted more than was obtained (safe side)
            result["evidence"].append(f"{len(ledgers) - matching} ledgers account more than the server obtained")
    return result


def _judge_relabel(
    rounds: list[dict[str, Any]], ledgers: dict[int, ClientLedger], run_id: str, client_logs: dict[str, str]
) -> dict[str, Any]:
    """The relabelled round: refused when no sum of it was unmasked, no ledger holds a release under another run
    id, and every client process named the reason (a process prints its first logical client's refusal and how
    many of its logical clients refused: "6 of 6 logical clients failed; first: user 3: refusing the server: ...")."""
    relabelled = rounds[-1] if len(rounds) > len(CELL_FROZEN_ROUNDS) + len(CELL_EVALUATED_ROUNDS) else None
    obtained = sorted({(u, p) for u in ledgers for p in (_obtained(relabelled, u) if relabelled else set())})
    foreign = sorted({e.run_id for ledger in ledgers.values() for e in ledger.entries if e.run_id != run_id})
    lines = {
        users: next((line.strip() for line in log.splitlines() if RELABEL_REFUSAL in line), None)
        for users, log in client_logs.items()
    }
    epsilons = {u: ledger.epsilon() for u, ledger in ledgers.items()}
    result: dict[str, Any] = {
        "rounds": [CELL_RELABELLED_ROUND],
        "client_epsilon": json_epsilon(max(epsilons.values())),
        "server_epsilon": None if relabelled is None else json_epsilon(_server_epsilon(relabelled)),
        "server_record": None if relabelled is None else relabelled["type"],
    }
    if obtained or foreign:
        leaks = [f"user {u}: the server unmasked its {p} of the relabelled round" for u, p in obtained]
        leaks += [f"a ledger holds releases under the relabelled run {r!r}" for r in foreign]
        result.update(outcome="leaked", evidence=leaks[:5])
        return result
    silent = sorted(users for users, line in lines.items() if line is None)
    nothing = "no sum of the relabelled round was unmasked and no ledger holds a release under its run id"
    if silent:  # nothing obtained, but not because the clients said no: the lie was not judged
        result.update(outcome="inconclusive", evidence=[f"{nothing}; client processes {silent} printed no refusal"])
    else:
        result.update(outcome="refused", evidence=[line for line in lines.values() if line is not None] + [nothing])
    return result


# ---------------------------------------------------------------------------------------------- the run
def _late(timeout_s: float, procs: list[ChildProcess]) -> str:
    logs = "\n".join(p.stderr()[-1500:] for p in procs)
    return f"the network cell did not finish within {timeout_s} s; logs:\n{logs}"


def _free_port() -> int:
    """A port nothing listens on now (the server binds it a few seconds later; the clients need it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_network_cell(workdir: Path, *, timeout_s: float = 90) -> dict[str, Any]:
    """Play the cell (module docstring) in `workdir` (the PKI, the run folder, the clients' state and logs) and
    judge each lie: {"verdict": "holds" | "fails", "lies": {name: {"outcome", "evidence", "client_epsilon",
    "server_epsilon", ...}}, "seconds"}. Raises NetworkCellError if the processes did not finish in `timeout_s`."""
    started = time.monotonic()
    deadline = started + timeout_s
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    certs = make_pki(workdir / "certs")
    run_dir, state = workdir / "run", workdir / "state"
    procs: list[ChildProcess] = []
    address = f"127.0.0.1:{_free_port()}"
    try:
        for users in CLIENT_PROCESSES:
            issue_credentials(certs, users, state)
        server = ChildProcess(
            ["-m", "attacks.hostile_server", "network-cell", "--", "--address", address]
            + ["--certs", str(certs), "--run-dir", str(run_dir)]
            + SERVER_ARGS
            + DATA_ARGS
            + MODEL_ARGS,
            workdir / "server.log",
            cwd=workdir,
        )
        procs.append(server)
        # The clients start while the server opens its listener (they retry a first contact for 10 s): once the
        # server has opened its run (its audit log exists) it listens within seconds.
        while not (run_dir / "audit.jsonl").exists():
            if server.popen.poll() is not None or time.monotonic() > deadline:
                raise NetworkCellError(f"the hostile server did not start: {server.stderr()[-3000:]}")
            time.sleep(0.05)
        clients = [
            ChildProcess(
                ["-m", "mrff_secure.app.cli", "client", "--address", address, "--users", users]
                + ["--certs", str(certs), "--state-dir", str(state), "--client-seed", "7", "--retry-timeout", "30"]
                + DATA_ARGS
                + ["-v"],
                workdir / f"clients-{users}.log",
                cwd=workdir,
            )
            for users in CLIENT_PROCESSES
        ]
        procs.extend(clients)
        try:
            server.wait_line("LISTENING", timeout=max(1.0, deadline - time.monotonic()))
        except AssertionError as exc:
            raise NetworkCellError(f"the hostile server did not start: {exc}") from exc
        for client in clients:  # they leave after the relabelled round
            try:
                client.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired as exc:
                raise NetworkCellError(_late(timeout_s, procs)) from exc
        # The server aborts the relabelled round (no client left) and records the end of the run: then its audit
        # log is complete and it is stopped (not left to linger for clients that are gone).
        while not _run_finished(run_dir):
            if server.popen.poll() is not None:
                break
            if time.monotonic() > deadline:
                raise NetworkCellError(_late(timeout_s, procs))
            time.sleep(0.1)
        server.kill()  # its records are written (synced); nothing is left for it to do
    finally:
        for proc in reversed(procs):
            proc.stop()
    lies = judge_cell(workdir)
    leaked = [name for name, lie in lies.items() if lie["outcome"] == "leaked"]
    unjudged = [name for name, lie in lies.items() if lie["outcome"] == "inconclusive"]
    return {
        "threat_model": "malicious-server (network: real processes, mutual TLS, the clients' default policy)",
        "verdict": "fails" if leaked else "inconclusive" if unjudged else "holds",
        "leaked": leaked,
        "lies": lies,
        "seconds": round(time.monotonic() - started, 2),
        "see": "tests/network/test_client_ledger.py, tests/attacks/test_network_cell.py",
    }


def judge_cell(workdir: Path) -> dict[str, dict[str, Any]]:
    """Each lie's outcome from what a played cell left in `workdir`: the server's audit log (run/audit.jsonl),
    each client's ledger (state/user-*/ledger.json) and the client processes' logs (clients-*.log)."""
    run_dir, state = workdir / "run", workdir / "state"
    client_logs = {users: (workdir / f"clients-{users}.log").read_text() for users in CLIENT_PROCESSES}
    stderr = "\n".join(client_logs.values())
    records = _audit_records(run_dir)
    rounds = [r for r in records if r.get("type") in ("round", "round_aborted")]
    if len(rounds) < len(CELL_FROZEN_ROUNDS) + len(CELL_EVALUATED_ROUNDS):
        raise NetworkCellError(
            f"the server recorded {len(rounds)} rounds, the cell needs rounds 0-{CELL_RELABELLED_ROUND}; "
            f"server log: {(workdir / 'server.log').read_text()[-2000:]}"
        )
    start = next(r for r in records if r.get("type") == "run_started")  # the run the clients enrolled in
    run_id, delta = str(start["run_id"]), float(start["settings"]["dp_delta"])
    ledgers = {}  # each client's own ledger, read as the client reads it, at its own delta (the cap does not matter)
    for user in range(USERS):
        path = state / f"user-{user}" / "ledger.json"
        own_delta = float(json.loads(path.read_text())["delta"]) if path.exists() else delta
        if own_delta != delta:
            raise NetworkCellError(f"user {user}'s ledger is at delta {own_delta}, the server's at {delta}")
        ledgers[user] = ClientLedger(path, user=user, delta=own_delta, max_epsilon=math.inf, max_aborted_sessions=0)
    frozen = rounds[: len(CELL_FROZEN_ROUNDS)]
    evaluated = rounds[len(CELL_FROZEN_ROUNDS) : len(CELL_FROZEN_ROUNDS) + len(CELL_EVALUATED_ROUNDS)]
    lies = {
        "freeze-and-difference": _judge(frozen, CELL_FROZEN_ROUNDS[1:], ledgers, run_id, stderr),
        "evaluation-differencing": _judge(
            evaluated, CELL_EVALUATED_ROUNDS, ledgers, run_id, stderr, key_phase="evaluation"
        ),
        "relabelled-replay": _judge_relabel(rounds, ledgers, run_id, client_logs),
    }
    models = [(r.get("evaluation") or {}).get("evaluated_model") for r in evaluated]
    lies["evaluation-differencing"]["evaluated_models"] = models
    return {name: {"lie": LIES[name], **lie} for name, lie in lies.items()}

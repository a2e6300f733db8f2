"""`mrff run-local` as an operator watches it: every process's lines live, whole and prefixed, rounds done with
an ETA, Ctrl-C stops every process with exit 130 and the server's results written; a start that fails leaves
no folder behind (a retry of the same command is not refused)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from . import harness

pytestmark = pytest.mark.timeout(180)


def _run_local(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mrff_secure.app.cli", "run-local", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=harness.ROOT,
        env=harness.child_env(),
        start_new_session=True,  # its own process group, as a terminal's Ctrl-C reaches it
    )


def _lines(proc: subprocess.Popen) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def _until(lines: queue.Queue[str], seen: list[str], predicate, timeout: float) -> str:
    """The first line, already seen or still to come, that `predicate` accepts (processes print in any order)."""
    for line in seen:
        if predicate(line):
            return line
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if predicate(line):
            return line
    raise AssertionError("no such line within the time; seen:\n" + "\n".join(seen[-40:]))


def test_lines_stream_live_with_prefixes_and_ctrl_c_stops_everything_with_130(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run_local(
        "--clients", "8", "--client-processes", "2", "--rounds", "100", "--run-dir", str(run_dir),
        "--min-group-size", "2", *harness.DATA_ARGS, *harness.MODEL_ARGS,
    )  # fmt: skip
    lines, seen = _lines(proc), []
    try:
        # the server's round line and the progress line arrive while the run goes on, not after it
        _until(lines, seen, lambda s: s.startswith("server") and "[ROUND 0] completed" in s, 120)
        progress = _until(lines, seen, lambda s: s.startswith("run-local") and "1/100 rounds done" in s, 10)
        assert proc.poll() is None and "left" in progress  # the ETA
        _until(lines, seen, lambda s: s.startswith("clients 0-3 ") and "[ROUND 0] users 0-3" in s, 30)
        _until(lines, seen, lambda s: s.startswith("clients 4-7 ") and "[ROUND 0] users 4-7" in s, 30)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C at the terminal: the whole process group
        assert proc.wait(timeout=90) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(0.5)
    while not lines.empty():
        seen.append(lines.get())
    text = "\n".join(seen)
    for line in seen:  # every line whole and named by its source (no two processes' output on one line)
        assert line.split(" ", 1)[0] in ("server", "clients", "run-local", "mrff"), line
    assert "NOT FINISHED" in text and "mrff server: interrupted" in text and "mrff run-local: interrupted" in text
    assert (run_dir / "server" / "summary.json").is_file()  # the server wrote its results before it stopped


def test_a_failed_start_leaves_no_folder_and_names_the_error(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run_local("--run-dir", str(run_dir), "--dataset", "kuaisar-r")  # no --data-dir: the server refuses
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert "server | mrff server: error: --dataset kuaisar-r needs --data-dir DIR" in out
    assert "the server did not start (exit code 2" in out
    assert not run_dir.exists()  # the same command with --data-dir is not refused by a half-made folder


def test_ctrl_c_on_a_server_exits_130_and_keeps_its_run_for_resume(tmp_path):
    certs = harness.make_pki(tmp_path)
    server, _ = harness.start_server(tmp_path, certs, tmp_path / "run")  # waits for clients that never come
    try:
        os.kill(server.pid, signal.SIGINT)
        assert server.wait(timeout=60) == 130  # the README's exit code for an interrupted command (it was 1)
        assert "interrupted; resume with mrff server --run-dir" in server.stderr()
    finally:
        server.stop()
    assert (tmp_path / "run" / "audit.jsonl").is_file()

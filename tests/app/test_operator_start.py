"""What an operator sees when a start goes wrong, in process (no server is started here): the network's
calibration holds its target for the smallest round it runs, a failed start leaves no folder, --overwrite
replaces only a run-local folder, plaintext only on loopback, the privacy command names the --dp to add."""

from __future__ import annotations

import argparse
import dataclasses
import socket

import pytest

from mrff_secure.app import cli, options, server_command
from mrff_secure.app.run_folder import NewRunFolder
from mrff_secure.data import make_synthetic
from mrff_secure.data.schema import PublicSchema
from mrff_secure.dp.config import min_survivors
from mrff_secure.errors import ConfigError
from mrff_secure.federation.client_update import build_global
from mrff_secure.round.accountant import RoundAccountant
from mrff_secure.round.update_vector import UpdateLayout
from server.privacy import round_release

SMALL = ["--dataset", "synthetic", "--synthetic-users", "60", "--maxlen", "10", "--attribute-dim", "4"]


def _server_args(*extra: str) -> argparse.Namespace:
    args = cli.build_parser().parse_args(["server", "--run-dir", "unused", *SMALL, *extra])
    options.resolve(args, "server")
    return args


def _spent(args: argparse.Namespace, spec, participants: int) -> float:
    data = make_synthetic(num_users=args.synthetic_users, maxlen=args.maxlen, seed=0)
    model, _ = build_global(options.model_config(args, args.maxlen), PublicSchema.of(data), args.seed)
    sized = dataclasses.replace(spec, min_survivors=min_survivors(participants, args.max_dropout_fraction))
    release = round_release(sized, UpdateLayout.from_model(model), participants)  # as the coordinator's round
    ledger = RoundAccountant(delta=args.delta)
    for _ in range(args.rounds):
        ledger.step(release=release)
    return ledger.epsilon()


def test_the_calibrated_target_holds_for_rounds_of_min_clients_and_more(capsys):
    """The server used to calibrate for the dataset's users (60 here) while rounds ran with --min-clients (20):
    such a run spent more than its target (8.78 for 8 in a run-local run). Now z is calibrated for the smallest
    round, and a larger one spends less."""
    args = _server_args("--rounds", "3", "--min-clients", "20", "--target-epsilon", "4", "--delta", "1e-5")
    data = PublicSchema.of(make_synthetic(num_users=60, maxlen=10, seed=0))
    spec = server_command._calibrated(server_command.round_spec(args, data.maxlen), args, data)
    smallest, larger = _spent(args, spec, 20), _spent(args, spec, 60)
    assert 3.9 < smallest <= 4.0 + 1e-9 and larger < smallest
    assert "for rounds of at least 20 clients" in capsys.readouterr().out


def test_a_failed_start_removes_only_what_it_created(tmp_path):
    fresh = tmp_path / "runs" / "a"
    with pytest.raises(ConfigError), NewRunFolder(fresh):
        fresh.mkdir(parents=True)
        (fresh / "config.toml").write_text("x")
        raise ConfigError("refused")
    assert not (tmp_path / "runs").exists()  # the parent it made too
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "mine.txt").write_text("the user's")
    with pytest.raises(KeyboardInterrupt), NewRunFolder(kept):
        (kept / "certs").mkdir()
        raise KeyboardInterrupt
    assert sorted(p.name for p in kept.iterdir()) == ["mine.txt"]
    with pytest.raises(RuntimeError), NewRunFolder(kept) as folder:
        (kept / "audit.jsonl").write_text("{}")
        folder.started()
        raise RuntimeError("after the start: kept for --resume")
    assert (kept / "audit.jsonl").is_file()


def test_usage_errors_leave_no_run_folder(tmp_path, capsys):
    run = tmp_path / "server-run"
    assert cli.main(["server", "--run-dir", str(run), "--certs", str(tmp_path / "no-certs")]) == 2
    assert "identity-ca.pub" in capsys.readouterr().err and not run.exists()
    audit = tmp_path / "audit"
    assert cli.main(["audit", "--run-dir", str(audit), "--canaries", "0"]) == 2
    assert "--canaries 0 leaves no DP claim" in capsys.readouterr().err and not audit.exists()


def test_a_port_in_use_is_named_before_anything_is_written(tmp_path, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        run = tmp_path / "run"
        code = cli.main(["server", "--run-dir", str(run), "--address", f"127.0.0.1:{port}", "--certs", "x"])
    assert code == 2
    assert f"port 127.0.0.1:{port} is in use" in capsys.readouterr().err and not run.exists()


@pytest.mark.parametrize("address", ["0.0.0.0:0", "[::]:50051"])
def test_plaintext_is_served_on_loopback_only(tmp_path, capsys, address):
    run = tmp_path / "run"
    assert cli.main(["server", "--insecure", "--address", address, "--run-dir", str(run), "--certs", "x"]) == 2
    assert "--insecure serves plaintext gRPC" in capsys.readouterr().err and not run.exists()


def test_run_local_overwrite_replaces_only_a_run_local_folder(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    with pytest.raises(ConfigError, match="not an empty folder; add --overwrite"):
        server_command._prepare_run_local_folder(other, overwrite=False)
    with pytest.raises(ConfigError, match="does not look like a run-local folder"):
        server_command._prepare_run_local_folder(other, overwrite=True)
    assert (other / "thesis.tex").is_file()
    earlier = tmp_path / "earlier"
    (earlier / "certs").mkdir(parents=True)
    (earlier / "config.toml").write_text("")
    server_command._prepare_run_local_folder(earlier, overwrite=True)
    assert not earlier.exists()


def test_privacy_without_a_dp_mode_says_which_to_add(capsys):
    assert cli.main(["privacy", "--clients", "100", "--rounds", "10", "--noise-multiplier", "1"]) == 2
    err = capsys.readouterr().err
    assert "--noise-multiplier needs a DP mode" in err and "--dp local" in err and "--dp distributed" in err


def test_run_local_refuses_a_client_count_whose_rounds_its_clients_would_refuse(tmp_path, capsys):
    """4 clients size the noise for 3 survivors, 1 beyond the 2 colluding ones: every client refused every
    round and the run timed out; now the command says so at once and names the smallest count."""
    run = tmp_path / "run"
    assert cli.main(["run-local", "--clients", "4", "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err
    assert "--clients 4: a round of 4 clients sizes its noise for 3 survivors" in err
    assert "give --clients 6 or more" in err and not run.exists()


def test_a_server_whose_smallest_round_default_clients_refuse_says_so(tmp_path):
    """`mrff server` with --min-clients 3 under distributed DP proposed rounds every default client refuses,
    silently; now its start warns, naming the smallest --min-clients they accept."""
    args = _server_args("--min-clients", "3")
    refused = server_command._default_clients_refuse(args, args.min_clients, "--min-clients")
    assert refused is not None and "give --min-clients 6 or more" in refused
    assert server_command._default_clients_refuse(args, 6, "--min-clients") is None
    assert server_command._default_clients_refuse(_server_args("--dp", "off"), 3, "--min-clients") is None


def test_a_closed_stdout_ends_the_command_silently_with_141(tmp_path):
    """`mrff privacy ... | head` printed "error: Broken pipe"; now the command ends quietly, as a Unix tool does."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "mrff_secure.app.cli", "privacy", "--dp", "local", "--noise-multiplier", "1"]
        + ["--rounds", "10", "--clients", "100"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.close()  # the reader is gone before the command writes anything
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == ""

"""One name, one flag: the client's server address is everyone's --address (and network.address in a
configuration), Ray actors and audit processes have names of their own, and an old name is refused with the
new one."""

from __future__ import annotations

import pytest

from mrff_secure.app import cli, options


@pytest.mark.parametrize(
    "argv, new",
    [
        (["client", "--server", "127.0.0.1:50051", "--users", "0"], "--server is now --address"),
        (["train", "--workers", "2"], "--workers is now --actors"),
        (["audit", "--run-dir", "x", "--workers", "2"], "--workers is now --processes"),
    ],
)
def test_an_old_flag_is_refused_with_its_new_name(argv, new, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(argv)
    assert exit_.value.code == 2 and new in capsys.readouterr().err


def test_the_client_takes_the_address_from_a_configuration_as_the_server_does(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('[network]\naddress = "10.1.2.3:6000"\n')
    for command, extra in (("client", ["--users", "0"]), ("server", ["--run-dir", "r"])):
        args = cli.build_parser().parse_args([command, "--config", str(config), *extra])
        options.resolve(args, command)
        assert args.address == "10.1.2.3:6000", command
    args = cli.build_parser().parse_args(["client", "--users", "0", "--set", "network.address=h:7"])
    options.resolve(args, "client")
    assert args.address == "h:7"


def test_an_old_configuration_key_is_refused_with_its_new_name(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text("[scale]\nworkers = 2\n")
    assert cli.main(["train", "--config", str(config), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown keys ['workers'] in [scale]; scale.workers is now scale.actors" in err
    assert not (tmp_path / "r").exists()


def test_report_takes_a_run_local_folder_as_audit_log_verify_does(tmp_path, capsys):
    """`mrff audit-log verify` took a run-local folder and `mrff report` refused it; now both take it."""
    import shutil
    from pathlib import Path

    fixture = Path(__file__).parents[1] / "fixtures" / "network_run" / "audit.jsonl"  # a real run-local run's log
    (tmp_path / "local" / "server").mkdir(parents=True)
    shutil.copy(fixture, tmp_path / "local" / "server" / "audit.jsonl")
    assert cli.main(["report", str(tmp_path / "local")]) == 0
    assert "is a run-local folder: the report is of its server run" in capsys.readouterr().out
    assert (tmp_path / "local" / "server" / "report.html").is_file()

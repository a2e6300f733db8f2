"""W15: the identity authority's private key lives apart from the server. `mrff certs authority` makes it in
a folder of its own, the server's certificates folder gets its public key only, and `mrff server` refuses to
start if it can read the authority's private key in its certificates or run folder (by the file's name or by
its content). run-local's authority stays apart too (tests/network/test_secure_round.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from mrff_secure.errors import ConfigError
from mrff_secure.pki import AuthorityPaths, make_authority, readable_authority_keys
from mrff_secure.secagg import primitives
from mrff_secure.wire import signing

from . import harness

pytestmark = pytest.mark.timeout(240)


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mrff_secure.app.cli", *args],
        capture_output=True,
        text=True,
        cwd=harness.ROOT,
        env=harness._env(),
        timeout=timeout,
    )


def server(certs: Path, run_dir: Path) -> subprocess.CompletedProcess:
    return cli(
        "server",
        "--address",
        "127.0.0.1:0",
        "--certs",
        str(certs),
        "--run-dir",
        str(run_dir),
        "--rounds",
        "1",
        *harness.DATA_ARGS,
        *harness.MODEL_ARGS,
    )


def authority_public(certs: Path) -> bytes:
    return signing.load_public_key(certs / "identity-ca.pub").public_bytes_raw()


def test_a_server_that_can_read_the_authority_key_refuses_to_start(tmp_path, certs) -> None:
    key = harness.authority_of(certs) / "identity-ca.key"
    # by name: the authority's key beside the server's keys, as `mrff certs` used to write it
    leaky = tmp_path / "leaky-certs"
    shutil.copytree(certs, leaky)
    shutil.copy(key, leaky / "identity-ca.key")
    done = server(leaky, tmp_path / "run-a")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"refusing to start: {leaky / 'identity-ca.key'}" in done.stderr
    assert "LISTENING" not in done.stdout
    # by content: the same key renamed, in the run folder
    run_dir = tmp_path / "run-b"
    (run_dir / "backup").mkdir(parents=True)
    shutil.copy(key, run_dir / "backup" / "old-keys.pem")
    done = server(certs, run_dir)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"refusing to start: {run_dir / 'backup' / 'old-keys.pem'}" in done.stderr
    assert "LISTENING" not in done.stdout


def test_only_the_authoritys_key_is_found_whatever_its_name(tmp_path, certs) -> None:
    folder = tmp_path / "mixed"
    shutil.copytree(certs, folder)  # server.key, client.key, ca.key, signing.key: none is the authority's
    other = primitives.generate_identity_key()
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (folder / "user-3-identity.key").write_bytes(pem)  # another Ed25519 key: not the authority's
    (folder / "big.bin").write_bytes(bytes(1 << 17))
    assert readable_authority_keys([folder], authority_public(certs)) == []
    shutil.copy(harness.authority_of(certs) / "identity-ca.key", folder / "spare")
    assert readable_authority_keys([folder, tmp_path / "missing"], authority_public(certs)) == [folder / "spare"]


def test_certs_authority_makes_the_authority_apart_and_publishes_its_public_key_only(tmp_path) -> None:
    certs, authority = tmp_path / "certs", tmp_path / "authority"
    assert cli("certs", "--out", str(certs)).returncode == 0
    assert not list(certs.glob("identity-ca*"))  # `mrff certs` no longer writes any authority file
    made = cli("certs", "authority", "--out", str(authority), "--certs", str(certs))
    assert made.returncode == 0, made.stderr
    assert (authority / "identity-ca.key").stat().st_mode & 0o777 == 0o600
    assert (certs / "identity-ca.pub").read_bytes() == (authority / "identity-ca.pub").read_bytes()
    assert not (certs / "identity-ca.key").exists()
    again = cli("certs", "authority", "--out", str(authority))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    into_certs = cli("certs", "authority", "--out", str(certs))
    assert into_certs.returncode == 2 and "must live apart from the server's" in into_certs.stderr
    with pytest.raises(ConfigError, match="must live apart"):
        make_authority(certs)
    issued = cli(
        "certs", "issue-client", "--authority", str(authority), "--users", "0-1", "--state-dir", str(tmp_path / "s")
    )
    assert issued.returncode == 0, issued.stderr
    assert AuthorityPaths(authority).key.exists() and (tmp_path / "s" / "user-1" / "credential.bin").exists()
    missing = cli("certs", "issue-client", "--authority", str(certs), "--users", "0", "--state-dir", str(tmp_path))
    assert missing.returncode == 2 and f"no identity authority key at {certs / 'identity-ca.key'}" in missing.stderr

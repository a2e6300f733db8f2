"""The deployment's PKI, shared by server and client: a development PKI made with `cryptography` alone,
the identity authority's credentials, and each client's identity key on disk.

`make_dev_pki` (`mrff certs`) writes the deployment's certificates folder: ca.crt / ca.key (a self-signed
TLS CA), server.crt / server.key (SANs: localhost, 127.0.0.1 and any --host), client.crt / client.key (mutual
TLS, the default), signing.key / signing.pub (Ed25519: the server signs round parameters, clients verify
them). The identity authority, which certifies each client's identity key, has its own folder and command
(`make_authority`, `mrff certs authority --out AUTHORITY_DIR`): identity-ca.key / identity-ca.pub; only
its public key is copied into a certificates folder (`publish_authority`). A server refuses to start if it
can read the authority's private key (`readable_authority_keys`, W15 in SECURITY.md): with it a server
could certify sybils. `mrff certs issue-client --authority AUTHORITY_DIR` issues one credential per client
(mrff_secure.secagg.identity). `IdentityFiles` is one client's identity key and credential in its state
folder. Private keys are written atomically with mode 0600. For development and tests, not production.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mrff_secure.atomic import write_bytes_atomic
from mrff_secure.errors import AuthenticationError, CheckpointError, ConfigError, ProtocolViolation
from mrff_secure.secagg.config import MAX_CLIENT_ID
from mrff_secure.secagg.identity import ClientCredential, CredentialExpired, issue_credential, verify_credential

VALIDITY_DAYS = 365


@dataclass(frozen=True)
class CertPaths:
    folder: Path

    def __getattr__(self, name: str) -> Path:  # ca_crt -> folder / "ca.crt"
        files = {
            "ca_crt": "ca.crt",
            "ca_key": "ca.key",
            "server_crt": "server.crt",
            "server_key": "server.key",
            "client_crt": "client.crt",
            "client_key": "client.key",
            "signing_key": "signing.key",
            "signing_pub": "signing.pub",
            "identity_ca_pub": "identity-ca.pub",  # the authority's public key only (publish_authority)
        }
        if name not in files:
            raise AttributeError(name)
        return self.folder / files[name]


AUTHORITY_KEY_FILE = "identity-ca.key"
AUTHORITY_PUB_FILE = "identity-ca.pub"


@dataclass(frozen=True)
class AuthorityPaths:
    """The identity authority's own folder (`mrff certs authority --out`): never a server's."""

    folder: Path

    @property
    def key(self) -> Path:
        return self.folder / AUTHORITY_KEY_FILE

    @property
    def pub(self) -> Path:
        return self.folder / AUTHORITY_PUB_FILE

    @property
    def revoked(self) -> Path:
        return self.folder / REVOKED_FILE


REVOKED_FILE = "revoked.json"
_REVOCATION_DOMAIN = b"mrff-secure/revocations/v1\x00"
_MAX_REVOCATION_BYTES = 64 << 20


@dataclass(frozen=True)
class RevocationList:
    """The identity authority's signed list of revoked (client id, identity key) pairs (`mrff certs revoke`;
    `issue-client --force` adds the key it replaces). A server refuses to enrol a revoked pair and a client
    refuses to start with one. File (JSON): {"format": "mrff-revocations", "version": 1, "issued_at",
    "revoked": [{"client", "identity_key" (hex)}...], "signature"}: Ed25519 by the authority over a domain
    tag and the canonical JSON of the other fields."""

    issued_at: int
    revoked: frozenset[tuple[int, bytes]]
    source: str = ""  # where it was read from (messages only)

    def covers(self, client_id: int, identity_public_key: bytes) -> bool:
        return (int(client_id), bytes(identity_public_key)) in self.revoked

    def _body(self) -> dict:
        entries = sorted(self.revoked)
        return {
            "format": "mrff-revocations",
            "version": 1,
            "issued_at": self.issued_at,
            "revoked": [{"client": c, "identity_key": k.hex()} for c, k in entries],
        }

    @staticmethod
    def _signed(body: dict) -> bytes:
        return _REVOCATION_DOMAIN + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed_by(self, authority: Ed25519PrivateKey) -> bytes:
        body = self._body()
        signature = authority.sign(self._signed(body))
        return json.dumps({**body, "signature": signature.hex()}, indent=1).encode()

    @classmethod
    def load(cls, path: Path, authority_public_key: bytes) -> "RevocationList":
        """The list at `path`, its signature checked under the authority's key (ConfigError naming the file)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        path = Path(path)
        data = read_file(path, "revocation list")
        if len(data) > _MAX_REVOCATION_BYTES:
            raise ConfigError(f"{path} is not a revocation list: {len(data)} bytes")
        try:
            fields = json.loads(data)
            if not isinstance(fields, dict) or fields.get("format") != "mrff-revocations":
                raise ValueError("not an mrff revocation list")
            if fields.get("version") != 1:
                raise ValueError(f"version {fields.get('version')!r} is not supported (this reads version 1)")
            signature = bytes.fromhex(fields.pop("signature"))
            issued_at = fields["issued_at"]
            revoked = set()
            for entry in fields["revoked"]:
                key = bytes.fromhex(entry["identity_key"])
                if not isinstance(entry["client"], int) or len(key) != 32:
                    raise ValueError(f"bad entry {entry!r:.80}")
                revoked.add((entry["client"], key))
            if not isinstance(issued_at, int):
                raise ValueError("issued_at is not an integer")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path} is not a readable revocation list: {exc}") from exc
        result = cls(issued_at, frozenset(revoked), str(path))
        if result._body() != fields:
            raise ConfigError(f"{path} is not a readable revocation list: unexpected or duplicated fields")
        try:
            Ed25519PublicKey.from_public_bytes(authority_public_key).verify(signature, cls._signed(fields))
        except (InvalidSignature, ValueError) as exc:
            raise ConfigError(
                f"{path} is not signed by the identity authority this process trusts (identity-ca.pub): refusing it"
            ) from exc
        return result


def revoke(
    paths: AuthorityPaths, entries: list[tuple[int, bytes]], *, publish_to: Sequence[Path] = ()
) -> RevocationList:
    """Add (client id, identity key) pairs to the authority's signed revocation list (AUTHORITY/revoked.json,
    made if missing), and copy it into each certificates folder of `publish_to`."""
    authority = load_authority_key(paths)
    public = authority.public_key().public_bytes_raw()
    current = RevocationList.load(paths.revoked, public).revoked if paths.revoked.exists() else frozenset()
    for client_id, key in entries:
        _check_client_id(client_id)
        if len(key) != 32:
            raise ConfigError(f"an identity key is 32 bytes, got {len(key)}")
    updated = RevocationList(int(time.time()), frozenset(current | {(c, bytes(k)) for c, k in entries}))
    data = updated.signed_by(authority)
    write_bytes_atomic(paths.revoked, data)
    for folder in publish_to:
        write_bytes_atomic(Path(folder) / REVOKED_FILE, data)
    return RevocationList(updated.issued_at, updated.revoked, str(paths.revoked))


def load_revocations(path: Path | None, certs_folder: Path, authority_public_key: bytes) -> RevocationList | None:
    """The revocation list named by --revoked, else CERTS/revoked.json if there is one, else None."""
    if path is None:
        path = Path(certs_folder) / REVOKED_FILE
        if not path.exists():
            return None
    return RevocationList.load(path, authority_public_key)


class IdentityFiles:
    """One logical client's identity in its state folder (STATE_DIR/user-<id>/):

    identity.key    its Ed25519 identity key (PEM, mode 0600), made on first use
    credential.bin  the identity authority's credential for that key (`mrff certs issue-client`)
    """

    def __init__(self, root: Path, user: int) -> None:
        self.folder = Path(root) / f"user-{user}"
        self.user = user

    @property
    def credential_path(self) -> Path:
        return self.folder / "credential.bin"

    @property
    def identity_path(self) -> Path:
        return self.folder / "identity.key"

    def credential(self, authority_public_key: bytes, revoked: RevocationList | None = None) -> ClientCredential:
        """This user's credential, checked against the identity authority (signature, expiry), its revocation
        list when given, and our own identity key."""
        path = self.credential_path
        try:
            credential = ClientCredential.from_bytes(path.read_bytes())
        except FileNotFoundError as exc:
            raise CheckpointError(
                f"{path} is missing: run `mrff certs issue-client` for user {self.user} "
                "(the identity authority certifies each client's identity key)"
            ) from exc
        except (OSError, ProtocolViolation) as exc:
            raise CheckpointError(f"{path} is not a readable credential: {exc}") from exc
        if credential.client_id != self.user:
            raise CheckpointError(
                f"{path} is not the identity authority's credential for user {self.user}: it "
                f"certifies client {credential.client_id}; run `mrff certs issue-client` for "
                f"user {self.user}"
            )
        try:
            certified = verify_credential(authority_public_key, credential, client_id=self.user)
        except CredentialExpired as exc:
            raise CheckpointError(f"{path}: {exc} for user {self.user}") from exc
        except AuthenticationError as exc:
            raise CheckpointError(
                f"{path} is not the identity authority's credential for user {self.user}: it "
                "does not verify under the identity authority's key (identity-ca.pub in --certs, "
                "or --identity-ca); have it issued by that authority (`mrff certs issue-client`)"
            ) from exc
        if not self.identity_path.exists():
            raise CheckpointError(
                f"{self.identity_path} is missing: the key {path} certifies is gone; make a new "
                f"key (`mrff client-key`) and have it certified (`mrff certs issue-client --force`)"
            )
        if certified != self.identity_key().public_key().public_bytes_raw():
            raise CheckpointError(
                f"{path} certifies another identity key than {self.identity_path}: have this key "
                "certified (`mrff certs issue-client`)"
            )
        if revoked is not None and revoked.covers(self.user, certified):
            raise CheckpointError(
                f"{path}: the identity authority revoked user {self.user}'s identity key ({revoked.source}): "
                f"make a new key and have it certified (`mrff certs issue-client --force`)"
            )
        return credential

    def identity_key(self) -> Ed25519PrivateKey:
        """This user's Ed25519 identity key, made (mode 0600) on first use."""
        path = self.identity_path
        if path.exists():
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except (ValueError, TypeError) as exc:
                raise CheckpointError(f"{path} is not a readable private key: {exc}") from exc
            if not isinstance(key, Ed25519PrivateKey):
                raise CheckpointError(f"{path} is not an Ed25519 key")
            return key
        key = Ed25519PrivateKey.generate()
        write_bytes_atomic(
            path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        os.chmod(path, 0o600)
        return key


def _write_private(path: Path, data: bytes) -> None:
    write_bytes_atomic(path, data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mrff-secure development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    common_name: str,
    usage: x509.ObjectIdentifier,
    hosts: list[str] | None,
    now: dt.datetime,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_dev_pki(folder: Path, *, hosts: list[str] | None = None, overwrite: bool = False) -> CertPaths:
    """Create the development CA, server and client certificates and the signing key (no identity authority:
    `make_authority` makes it in a folder of its own)."""
    paths = CertPaths(Path(folder))
    if paths.ca_key.exists() and not overwrite:
        raise ConfigError(f"{paths.ca_key} exists; pass --overwrite to replace the development PKI")
    hosts = ["localhost", "127.0.0.1"] + [h for h in (hosts or []) if h not in ("localhost", "127.0.0.1")]
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("mrff-secure development CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server_cert = _leaf(ca_key, ca_name, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, hosts, now)
    client_key, client_cert = _leaf(ca_key, ca_name, "mrff-client", ExtendedKeyUsageOID.CLIENT_AUTH, None, now)
    signing = Ed25519PrivateKey.generate()
    pem = serialization.Encoding.PEM
    _write_private(paths.ca_key, _key_pem(ca_key))
    write_bytes_atomic(paths.ca_crt, ca.public_bytes(pem))
    _write_private(paths.server_key, _key_pem(server_key))
    write_bytes_atomic(paths.server_crt, server_cert.public_bytes(pem))
    _write_private(paths.client_key, _key_pem(client_key))
    write_bytes_atomic(paths.client_crt, client_cert.public_bytes(pem))
    _write_private(paths.signing_key, _key_pem(signing))
    write_bytes_atomic(
        paths.signing_pub, signing.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return paths


def make_authority(folder: Path, *, overwrite: bool = False) -> AuthorityPaths:
    """Create the identity authority's key pair in its own folder (identity-ca.key mode 0600, identity-ca.pub).
    The folder must not be a certificates folder a server reads (one with server.key)."""
    paths = AuthorityPaths(Path(folder))
    if (paths.folder / "server.key").exists():
        raise ConfigError(
            f"{paths.folder} holds a server key: the identity authority's key must live apart from the server's "
            "(W15); choose another --out"
        )
    if paths.key.exists() and not overwrite:
        raise ConfigError(
            f"{paths.key} exists; pass --overwrite to replace the identity authority (every credential it "
            "issued then stops verifying)"
        )
    authority = Ed25519PrivateKey.generate()
    _write_private(paths.key, _key_pem(authority))
    write_bytes_atomic(
        paths.pub,
        authority.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    return paths


def publish_authority(authority: AuthorityPaths, certs_folder: Path) -> Path:
    """Copy the authority's public key (never its private key) into a certificates folder; returns the copy."""
    target = CertPaths(Path(certs_folder)).identity_ca_pub
    write_bytes_atomic(target, read_file(authority.pub, "identity authority's public key"))
    return target


_PEM_PRIVATE = b"PRIVATE KEY-----"
_SCAN_MAX_BYTES = 1 << 16  # a PEM key is a few hundred bytes; larger files (checkpoints, logs) are not keys
_SCAN_MAX_FILES = 10_000


def readable_authority_keys(folders: list[Path], authority_public_key: bytes) -> list[Path]:
    """Files in `folders` (and their subfolders) a process could use as the identity authority's private key:
    any file named identity-ca.key, and any readable PEM private key whose public key is the authority's
    (`authority_public_key`, raw 32 bytes), whatever its name."""
    found: list[Path] = []
    seen = 0
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for path in sorted(Path(folder).rglob("*")):
            seen += 1
            if seen > _SCAN_MAX_FILES:
                return found
            try:
                if not path.is_file():
                    continue
                if path.name == AUTHORITY_KEY_FILE:
                    found.append(path)
                    continue
                if path.stat().st_size > _SCAN_MAX_BYTES:
                    continue
                data = path.read_bytes()
            except OSError:  # unreadable: not usable by this process either
                continue
            if _PEM_PRIVATE not in data:
                continue
            try:
                key = serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError):
                continue
            if isinstance(key, Ed25519PrivateKey) and key.public_key().public_bytes_raw() == authority_public_key:
                found.append(path)
    return found


def load_authority_public_key(path: Path) -> bytes:
    """The identity authority's raw Ed25519 public key (32 bytes) from its PEM file (identity-ca.pub)."""
    from mrff_secure.wire.signing import load_public_key

    return load_public_key(
        path, "identity authority's public key (identity-ca.pub, made by `mrff certs authority`)"
    ).public_bytes_raw()


def load_authority_key(paths: AuthorityPaths) -> Ed25519PrivateKey:
    """The identity authority's private key (identity-ca.key): only `mrff certs issue-client` needs it."""
    from mrff_secure.wire.signing import load_private_key

    if not paths.key.exists():
        raise ConfigError(
            f"no identity authority key at {paths.key}: make one with `mrff certs authority --out {paths.folder}` "
            "(--authority names its folder)"
        )
    return load_private_key(paths.key, "identity authority's key (identity-ca.key, `mrff certs authority`)")


def load_identity_public_key(path: Path) -> bytes:
    """A client's Ed25519 identity public key (PEM, `mrff client-key`) as raw 32 bytes."""
    from mrff_secure.wire.signing import load_public_key

    return load_public_key(path, "client's identity public key").public_bytes_raw()


def _check_client_id(client_id: int) -> None:
    if not 0 <= client_id <= MAX_CLIENT_ID:
        raise ConfigError(f"client id {client_id} is outside [0, {MAX_CLIENT_ID}]: the server would refuse it")


def _existing_key(out: Path, client_id: int) -> bytes | None:
    """The identity key the credential at `out` binds `client_id` to (None: none readable for that id)."""
    try:
        existing = ClientCredential.from_bytes(out.read_bytes())
    except (OSError, ProtocolViolation):
        return None
    return existing.identity_public_key if existing.client_id == client_id else None


def _conflict(out: Path, client_id: int, identity_public_key: bytes) -> str | None:
    """Why writing (client_id -> key) to `out` would re-bind an id, or None if it would not."""
    if not out.exists():
        return None
    try:
        existing = ClientCredential.from_bytes(out.read_bytes())
    except ProtocolViolation as exc:
        if "version-1" in str(exc) or "format version" in str(exc):
            return None  # an old-format credential: re-issuing it is what its message asks for
        return f"{out} exists and is not a readable credential"
    except OSError:
        return f"{out} exists and is not a readable credential"
    if existing.client_id != client_id:
        return f"{out} holds the credential of client {existing.client_id}, not {client_id}"
    if existing.identity_public_key != identity_public_key:
        return f"{out} binds client {client_id} to another identity key"
    return None


def _expiry(valid_days: float | None) -> int:
    from mrff_secure.secagg.identity import DEFAULT_VALIDITY_SECONDS

    if valid_days is None:
        return int(time.time()) + DEFAULT_VALIDITY_SECONDS
    if not 0 < valid_days <= 3660:
        raise ConfigError(f"--valid-days must be in (0, 3660], got {valid_days}")
    return int(time.time() + valid_days * 86400)


def issue_client_credential(
    paths: AuthorityPaths,
    client_id: int,
    identity_public_key: bytes,
    out: Path,
    *,
    force: bool = False,
    authority: Ed25519PrivateKey | None = None,
    valid_days: float | None = None,
) -> ClientCredential:
    """Sign (client id -> identity key, until its expiry) with the identity authority and write the credential.

    An existing credential at `out` for another key or id is never replaced without `force`: re-binding
    an id to another key is exactly what the authority exists to prevent. With `force`, the key it
    replaces is added to the authority's revocation list (`revoke`), so the old credential stops
    verifying at every server given the list, not only when it expires."""
    _check_client_id(client_id)
    authority = authority if authority is not None else load_authority_key(paths)
    credential = issue_credential(authority, client_id, identity_public_key, expires_at=_expiry(valid_days))
    out = Path(out)
    problem = _conflict(out, client_id, credential.identity_public_key)
    if problem is not None and not force:
        raise ConfigError(
            f"{problem}; re-binding client {client_id} needs --force (only if that client really "
            "has a new identity key; the old key is then revoked)"
        )
    replaced = _existing_key(out, client_id)
    if replaced is not None and replaced != credential.identity_public_key:
        revoke(paths, [(client_id, replaced)])
    write_bytes_atomic(out, credential.to_bytes())
    return credential


def issue_state_credentials(
    paths: AuthorityPaths, users: list[int], state_dir: Path, *, force: bool = False, valid_days: float | None = None
) -> int:
    """Development form: make each user's identity key in its client state folder (if missing) and write
    its credential there (STATE_DIR/user-<id>/credential.bin). Every user is checked before any
    credential is written, so a refusal leaves the folder as it was. Returns the number issued."""
    for user in users:
        _check_client_id(user)
    authority = load_authority_key(paths)
    stores = [IdentityFiles(state_dir, user) for user in users]
    keys = [store.identity_key().public_key().public_bytes_raw() for store in stores]
    problems = [p for p in (_conflict(s.credential_path, s.user, k) for s, k in zip(stores, keys)) if p]
    if problems and not force:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ConfigError(
            f"{problems[0]}{more}; re-binding needs --force (only if those clients really have new "
            "identity keys); no credential was written"
        )
    for store, key in zip(stores, keys):
        issue_client_credential(
            paths, store.user, key, store.credential_path, force=True, authority=authority, valid_days=valid_days
        )
    return len(users)


def read_file(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}") from exc

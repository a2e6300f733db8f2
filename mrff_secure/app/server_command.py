"""`mrff server`, `mrff certs`, `mrff audit-log verify` and `mrff run-local`."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from mrff_secure.app import options
from mrff_secure.atomic import write_json_atomic
from mrff_secure.checks import check_int, check_number
from mrff_secure.errors import ConfigError, MrffError

if TYPE_CHECKING:  # imported where used: the command line starts without torch
    from mrff_secure.app.run_folder import NewRunFolder
    from mrff_secure.data.schema import PublicSchema
    from mrff_secure.round.spec import RoundSpec
    from server.run_state import ServerSettings

ENDPOINT_FILE = "endpoint.json"
CONFIG_FILE = "config.toml"
NETWORK_DP_MODES = ("off", "distributed")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "server",
        help="run the gRPC coordinator (mutual TLS by default)",
        description="The coordinator of secure rounds over gRPC. A new run needs --run-dir; "
        "--run-dir DIR --resume continues it after a crash with its own configuration.",
    )
    p.add_argument(
        "--run-dir", type=Path, required=True, help="folder of the checkpoint, the audit log and config.toml"
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir after a crash")
    p.add_argument(
        "--schema",
        type=Path,
        help="the dataset's public schema (`mrff schema`): the server then reads "
        "no dataset file (default: derive it from --dataset)",
    )
    p.add_argument(
        "--revoked",
        type=Path,
        default=None,
        help="the identity authority's signed revocation list (`mrff certs revoke`): enrolment of a "
        "revoked key is refused (default: CERTS/revoked.json if there is one)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level, with gRPC's own lines")
    options.add_options(p, "server")
    p.set_defaults(handler="mrff_secure.app.server_command:server_main")

    sc = sub.add_parser("schema", help="write a dataset's public schema (no user rows) for `mrff server --schema`")
    sc.add_argument("--out", type=Path, required=True, help="the schema file to write")
    options.add_options(sc, "schema")
    sc.set_defaults(handler="mrff_secure.app.server_command:schema_main")

    c = sub.add_parser(
        "certs",
        help="make a development PKI (TLS CA, server/client certificates, signing key); `mrff certs "
        "authority` makes the identity authority apart, `mrff certs issue-client` certifies clients",
    )
    c.add_argument("--out", type=Path, default=Path("certs"), help="the folder to write (default: certs)")
    c.add_argument("--host", action="append", default=[], help="extra server host name or IP (repeatable)")
    c.add_argument("--overwrite", action="store_true", help="replace an existing PKI in --out")
    c.set_defaults(handler="mrff_secure.app.server_command:certs_main")
    csub = c.add_subparsers(dest="certs_command")
    au = csub.add_parser(
        "authority",
        help="make the identity authority's key pair in a folder of its own (offline, never the server's)",
        description="Write AUTHORITY_DIR/identity-ca.key (mode 0600) and identity-ca.pub. Keep the folder "
        "off the server: a server refuses to start if it can read identity-ca.key in its --certs or "
        "--run-dir. --certs CERTS copies the public key (only) into the server's and clients' folder.",
    )
    au.add_argument("--out", type=Path, required=True, help="the authority's folder (not a --certs folder)")
    au.add_argument(
        "--certs", type=Path, action="append", default=[], help="copy identity-ca.pub here (repeatable) (default: none)"
    )
    au.add_argument("--overwrite", action="store_true", help="replace an existing authority in --out")
    au.set_defaults(handler="mrff_secure.app.server_command:authority_main")
    i = csub.add_parser(
        "issue-client",
        help="the identity authority certifies client identity keys (offline)",
        description="Sign (client id -> identity key) with AUTHORITY/identity-ca.key. One client: "
        "--client-id N --identity-pub FILE --out FILE. Development: --users 0-99 "
        "--state-dir DIR makes missing keys in DIR/user-<id>/ and writes each "
        "credential.bin beside them. An id bound to another key is refused without --force.",
    )
    i.add_argument(
        "--authority",
        type=Path,
        default=Path("authority"),
        help="the identity authority's folder (`mrff certs authority --out`; default: authority)",
    )
    i.add_argument("--client-id", type=int, help="one client: its id (with --identity-pub and --out)")
    i.add_argument(
        "--identity-pub",
        type=Path,
        help="one client: its Ed25519 identity public key (PEM, written by `mrff client-key`)",
    )
    i.add_argument("--out", type=Path, help="one client: where to write its credential")
    i.add_argument("--users", help="development form: ids like 0-99; keys and credentials in --state-dir")
    i.add_argument("--state-dir", type=Path, help="development form: the clients' state folder (user-<id>/)")
    i.add_argument(
        "--force",
        action="store_true",
        help="replace a credential that binds the id to another key (the replaced key is revoked: "
        "AUTHORITY/revoked.json)",
    )
    i.add_argument(
        "--valid-days", type=float, default=None, help="the credentials expire after this many days (default: 365)"
    )
    i.set_defaults(handler="mrff_secure.app.server_command:issue_client_main")
    rv = csub.add_parser(
        "revoke",
        help="the identity authority revokes a client's identity key (signed list AUTHORITY/revoked.json)",
        description="Add (client id, identity key) to the authority's signed revocation list. The key: "
        "--identity-pub FILE or --credential FILE (the credential that certifies it). --certs CERTS copies "
        "the list there: `mrff server` reads CERTS/revoked.json (or --revoked FILE) and refuses to enrol a "
        "revoked key; `mrff client` refuses to start with one.",
    )
    rv.add_argument(
        "--authority", type=Path, default=Path("authority"), help="the authority's folder (default: authority)"
    )
    rv.add_argument("--client-id", type=int, required=True, help="the client whose key is revoked")
    rv.add_argument("--identity-pub", type=Path, help="the revoked Ed25519 identity public key (PEM)")
    rv.add_argument("--credential", type=Path, help="or: a credential that certifies the revoked key")
    rv.add_argument(
        "--certs", type=Path, action="append", default=[], help="copy the list here (repeatable) (default: none)"
    )
    rv.set_defaults(handler="mrff_secure.app.server_command:revoke_main")

    a = sub.add_parser("audit-log", help="inspect a run's hash-chained, signed audit log")
    asub = a.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser(
        "verify",
        help="check the chain and the server's signatures; exit 0 only for an intact, signed, finished run",
        description="Exit 0: intact, every signature valid under the key you give, signed through run_finished "
        "(and, with --receipts, every client's receipt found in the log). Exit 1: broken (empty, altered, "
        "rewritten, signed by another key, contradicted by a receipt) or unfinished (the run did not finish, "
        "or the log was cut). One line says which. Without receipts the holder of the signing key can rewrite "
        "the whole log and re-sign it: only clients' receipts catch that.",
    )
    v.add_argument("run_dir", type=Path, help="the server's run folder (or a run-local folder)")
    v.add_argument(
        "--signing-pub",
        type=Path,
        default=None,
        help="required: the server's signing public key as you obtained it out of band (never one from the run "
        "folder: whoever can rewrite the log can replace that file too)",
    )
    v.add_argument(
        "--receipts",
        type=Path,
        nargs="+",
        default=None,
        metavar="PATH",
        help="clients' receipts (STATE_DIR/user-<id>/receipts.jsonl, or a folder holding them): each signed chain "
        "head a client received must be in the log; catches a log rewritten by the signing key's holder",
    )
    v.add_argument(
        "--allow-unfinished",
        action="store_true",
        help="exit 0 for an intact, signed log of a run that has not finished (yet)",
    )
    v.set_defaults(handler="mrff_secure.app.server_command:audit_verify_main")

    r = sub.add_parser("run-local", help="a server and P client processes on loopback, end to end")
    r.add_argument("--client-processes", type=int, default=2, help="client processes (default: 2)")
    r.add_argument(
        "--clients",
        type=int,
        default=20,
        help="logical clients (users 0..N-1), spread over the processes (default: 20)",
    )
    r.add_argument(
        "--run-dir", type=Path, default=Path("runs/local"), help="a new or empty folder (default: runs/local)"
    )
    r.add_argument(
        "--overwrite", action="store_true", help="replace an earlier run-local folder in --run-dir (default: refuse)"
    )
    r.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds (default: 3600)")
    r.add_argument("--client-seed", type=int, default=None, help="seed of the clients' dropout (default: random)")
    r.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    options.add_options(r, "run-local")
    r.set_defaults(handler="mrff_secure.app.server_command:run_local_main")


# ------------------------------------------------------------------ certs / audit
def certs_main(args: argparse.Namespace) -> int:
    from mrff_secure.pki import make_dev_pki

    options.writable_folder(args.out, "--out")
    paths = make_dev_pki(args.out, hosts=args.host, overwrite=args.overwrite)
    print(
        f"wrote the development PKI to {paths.folder}: ca.crt, server.crt/key, client.crt/key, "
        "signing.key/pub (keys mode 0600; for development only); make the identity authority apart with "
        f"`mrff certs authority --out AUTHORITY_DIR --certs {paths.folder}`"
    )
    return 0


def authority_main(args: argparse.Namespace) -> int:
    from mrff_secure.pki import make_authority, publish_authority

    options.writable_folder(args.out, "--out")
    paths = make_authority(args.out, overwrite=args.overwrite)
    copies = [str(publish_authority(paths, folder)) for folder in args.certs]
    print(
        f"wrote the identity authority to {paths.folder}: identity-ca.key (mode 0600: keep it offline, never "
        f"where a server can read it) and identity-ca.pub"
        + (f"; copied the public key to {', '.join(copies)}" if copies else "")
    )
    return 0


def schema_main(args: argparse.Namespace) -> int:
    from mrff_secure.data.schema import PublicSchema

    options.resolve(args, "schema")
    options.writable_file(args.out, "--out")
    data = options.load_dataset(args)
    schema = PublicSchema.of(data)
    schema.save(args.out)
    print(
        f"wrote the public schema of {schema.name} to {args.out}: {schema.item_attributes.num_rows} items, "
        f"{schema.user_attributes.num_fields} user fields, maxlen {schema.maxlen}, population {schema.population} "
        "(no user rows)"
    )
    return 0


def issue_client_main(args: argparse.Namespace) -> int:
    from mrff_secure.checks import parse_users
    from mrff_secure.pki import (
        AuthorityPaths,
        issue_client_credential,
        issue_state_credentials,
        load_identity_public_key,
    )

    paths = AuthorityPaths(args.authority)
    if args.out is not None:
        options.writable_file(args.out, "--out")
    if args.users is not None:
        if args.state_dir is None or args.client_id is not None or args.out is not None or args.identity_pub:
            raise ConfigError(
                "the development form takes --users and --state-dir (not --client-id, --identity-pub or --out)"
            )
        count = issue_state_credentials(
            paths, parse_users(args.users), args.state_dir, force=args.force, valid_days=args.valid_days
        )
        print(f"issued {count} credentials into {args.state_dir}/user-<id>/credential.bin")
        return 0
    if args.client_id is None or args.identity_pub is None or args.out is None or args.state_dir is not None:
        raise ConfigError("give --client-id, --identity-pub and --out (or, for development, --users with --state-dir)")
    key = load_identity_public_key(args.identity_pub)
    issue_client_credential(paths, args.client_id, key, args.out, force=args.force, valid_days=args.valid_days)
    print(
        f"issued the credential of client {args.client_id} to {args.out}: copy it to the client's "
        f"STATE_DIR/user-{args.client_id}/credential.bin"
    )
    return 0


def revoke_main(args: argparse.Namespace) -> int:
    from mrff_secure.pki import AuthorityPaths, load_identity_public_key, revoke
    from mrff_secure.secagg.identity import ClientCredential

    if (args.identity_pub is None) == (args.credential is None):
        raise ConfigError("give the revoked key: --identity-pub FILE or --credential FILE (one of them)")
    if args.identity_pub is not None:
        key = load_identity_public_key(args.identity_pub)
    else:
        from mrff_secure.errors import ProtocolViolation
        from mrff_secure.pki import read_file

        try:
            credential = ClientCredential.from_bytes(read_file(args.credential, "credential"))
        except ProtocolViolation as exc:
            raise ConfigError(f"{args.credential} is not a readable credential: {exc}") from exc
        if credential.client_id != args.client_id:
            raise ConfigError(f"{args.credential} certifies client {credential.client_id}, not {args.client_id}")
        key = credential.identity_public_key
    paths = AuthorityPaths(args.authority)
    listed = revoke(paths, [(args.client_id, key)], publish_to=args.certs)
    copies = f"; copied to {', '.join(str(c) for c in args.certs)}" if args.certs else ""
    print(
        f"revoked client {args.client_id}'s key {key.hex()[:16]}...: {len(listed.revoked)} revoked in "
        f"{paths.revoked}{copies} (give it to the server: CERTS/revoked.json or --revoked)"
    )
    return 0


def audit_verify_main(args: argparse.Namespace) -> int:
    from mrff_secure.audit_log import find_log, verify
    from mrff_secure.wire import signing

    log_path = find_log(args.run_dir)
    key_path = args.signing_pub
    if key_path is None:
        raise ConfigError(
            "pass --signing-pub FILE: the server's signing public key as you obtained it out of band. A key "
            "stored in the run folder is never used: whoever rewrote the log could have replaced it."
        )
    if not Path(key_path).is_file():
        raise ConfigError(f"no signing public key at {key_path} (--signing-pub)")
    public_key = signing.load_public_key(key_path)
    report = verify(log_path, public_key)
    if report.status == "broken":
        print(f"BROKEN ({log_path}): {report.problem}")
        return 1
    receipts = ""
    if args.receipts:
        from client.receipts import check_receipts

        checked = check_receipts(log_path, public_key, args.receipts)
        if not checked.ok:
            print(f"BROKEN ({log_path}): {checked.problem}")
            return 1
        receipts = f"; all {checked.checked} client receipts found in the log"
        if checked.other_runs:
            receipts += f" ({checked.other_runs} receipts of other runs skipped)"
    else:
        receipts = "; no client receipts checked (a rewrite by the signing key's holder is only caught with --receipts)"
    if report.ok:
        print(
            f"ok: {report.records} records, chain intact, signed by {key_path} through the end of the finished run; "
            f"last digest {report.last_digest}{receipts}"
        )
        return 0
    print(
        f"UNFINISHED: {report.records} records, chain intact, signed through line {report.signed_through + 1}: "
        f"{report.problem}{receipts}"
    )
    return 0 if args.allow_unfinished else 1


# ------------------------------------------------------------------ server
def refuse_authority_key(folders: list[Path], authority_public_key: bytes) -> None:
    """ConfigError naming the file if this process can read the identity authority's private key in `folders`
    (by its name, identity-ca.key, or by its content: any PEM private key of the authority's public key)."""
    from mrff_secure.pki import readable_authority_keys

    found = readable_authority_keys(folders, authority_public_key)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise ConfigError(
            f"refusing to start: {found[0]}{more} is the identity authority's private key (or named like it) and "
            "this server can read it; a server holding it can certify clients of its own (sybils, W15 in "
            "SECURITY.md). Move it off this machine (`mrff certs authority --out` makes the authority in a "
            "folder of its own) and start again"
        )


def round_spec(args: argparse.Namespace, maxlen: int) -> RoundSpec:
    """The round parameters the server proposes, validated as `mrff train` validates its own.

    Refused: DP modes the network does not run; distributed DP without secure aggregation; DP with no
    noise; both --noise-multiplier and --target-epsilon. z from --target-epsilon is calibrated by the
    server once the model's layout is known (see `_calibrated`), so here it is a placeholder of 1.0.
    """
    from mrff_secure.round.spec import RoundSpec

    if args.dp not in NETWORK_DP_MODES:
        raise ConfigError(
            f"--dp {args.dp} is not available on the network (only off or distributed: a network client "
            "adds its share of the noise under secure aggregation)"
        )
    if args.secure_aggregation == "inmemory":
        raise ConfigError("--secure-aggregation inmemory is for `mrff train`; the network runs the protocol for real")
    secure = args.secure_aggregation != "off"
    z, target = args.noise_multiplier, args.target_epsilon
    mechanism = args.mechanism or "discrete_gaussian"
    if args.dp == "distributed":
        if not secure:
            raise ConfigError(
                "--dp distributed needs secure aggregation: its noise is split among the clients "
                "and only the secure sum carries all of it (drop --secure-aggregation off)"
            )
        if z is not None and target is not None:
            raise ConfigError("give --noise-multiplier or --target-epsilon, not both")
        if target is None and z is None:  # the network's private default: calibrate to a stated epsilon
            target = args.target_epsilon = options.NETWORK_TARGET_EPSILON
        if target is None and (z is None or z <= 0):
            raise ConfigError(
                "--dp distributed with no noise gives no privacy: give --noise-multiplier > 0 "
                "or --target-epsilon (or run --dp off, and say so)"
            )
        if mechanism == "gaussian":
            raise ConfigError("--dp distributed uses an integer mechanism: --mechanism discrete_gaussian or skellam")
    elif z not in (None, 0.0) or target is not None:
        raise ConfigError("--noise-multiplier/--target-epsilon need --dp distributed")
    return RoundSpec(
        local_steps=args.local_steps,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        dp_mode=args.dp,
        clip=args.clip,
        noise_multiplier=(z if z is not None else (1.0 if target else 0.0)),
        min_survivors=1,
        min_group_size=args.min_group_size,
        mechanism=mechanism,
        modulus_bits=args.modulus_bits,
        count_cap=maxlen,
    )  # min_survivors: set per round


NETWORK_MAX_DEFAULT_DELTA = 1e-5  # the clients' default policy accounts at delta 1e-5


def _server_settings(args: argparse.Namespace) -> ServerSettings:
    from server.run_state import ServerSettings

    if (args.federated_eval_every or args.final_evaluation) and args.dp == "off":
        print(
            "NOTE with --dp off the federated evaluation is an exact sum outside any guarantee: clients send zeros "
            "there unless their policy has allow_exact_evaluation",
            file=sys.stderr,
            flush=True,
        )

    return ServerSettings(
        rounds=args.rounds,
        seed=args.seed,
        client_fraction=args.client_fraction,
        min_clients=args.min_clients,
        secure=args.secure_aggregation != "off",
        train_timeout=args.train_timeout,
        stage_timeout=args.stage_timeout,
        dp_delta=args.delta,
        corrupt_neighbours=args.corrupt_neighbours,
        max_dropout_fraction=args.max_dropout_fraction,
        num_neighbours=args.num_neighbours,
        threshold=args.threshold,
        eval_every=args.federated_eval_every,
        max_evaluations=args.max_evaluations,
        final_evaluation=args.final_evaluation,
        server_optimizer=args.server_optimizer,
        server_lr=args.server_lr,
        server_momentum=args.server_momentum,
        lr_schedule=args.lr_schedule,
    )


def planned_evaluations(rounds: int, every: int, cap: int, final: bool = False) -> int:
    """The federated evaluations a run of `rounds` rounds releases at most: every `every` rounds and the last
    (none when `every` is 0), and the final model's with `final`, at most `cap` in all, the final one kept
    (the coordinator's schedule: `ServerSettings.evaluates`, `round_evaluations_cap`, `evaluates_final_model`)."""
    final_one = int(final and cap > 0)
    if every == 0:
        return final_one
    return min(cap - final_one, sum(1 for r in range(rounds) if r % every == 0 or r == rounds - 1)) + final_one


def _calibrated(spec: RoundSpec, args: argparse.Namespace, data: PublicSchema) -> RoundSpec:
    """The spec with z calibrated to --target-epsilon over --rounds, by the accountant the server then uses,
    for rounds of --min-clients participants: the fewest a round runs with. A round with more participants
    sizes the noise shares for more survivors, so it spends less (the colluding ones are a smaller part of
    them): the target holds for every run, not only for one of the expected size."""
    import dataclasses

    from mrff_secure.dp.config import min_survivors
    from mrff_secure.federation.client_update import build_global
    from mrff_secure.round.update_vector import UpdateLayout
    from mrff_secure.run_summary import format_epsilon
    from server.privacy import calibrate

    model, _ = build_global(options.model_config(args, data.maxlen), data, args.seed)
    n = args.min_clients
    sized = dataclasses.replace(spec, min_survivors=min_survivors(n, args.max_dropout_fraction))
    evaluations = planned_evaluations(
        args.rounds, args.federated_eval_every, args.max_evaluations, args.final_evaluation
    )
    z = calibrate(
        sized,
        UpdateLayout.from_model(model),
        participants=n,
        target_epsilon=args.target_epsilon,
        rounds=args.rounds,
        delta=args.delta,
        evaluations=evaluations,
        corrupt_neighbours=args.corrupt_neighbours,
    )
    print(
        f"CALIBRATED noise multiplier {z:.6g} for epsilon {format_epsilon(args.target_epsilon)} over {args.rounds} rounds"
        f" and {evaluations} federated evaluations, for rounds of at least {n} clients (delta {args.delta:.3g}, zero-out adjacency)",
        flush=True,
    )
    return dataclasses.replace(spec, noise_multiplier=z)


def _resolve_server(args: argparse.Namespace) -> dict:
    """A new run: the command's configuration. --resume: the run's own config.toml, except the
    deployment ([network]: address, TLS, timeouts), which comes from the command."""
    run_dir = Path(args.run_dir)
    stored = run_dir / CONFIG_FILE
    if args.resume:
        run_settings = [
            n
            for n in options.COMMAND_OPTIONS["server"]
            if options.BY_NAME[n].table != "network" and getattr(args, n, None) is not None
        ]
        if run_settings or args.config is not None:
            flags = ", ".join(options.BY_NAME[n].flag for n in run_settings) or "--config"
            raise ConfigError(f"--resume continues the run with its own configuration ({stored}); drop {flags}")
        if not stored.is_file():
            raise ConfigError(f"cannot resume: {stored} is missing (is --run-dir a server run folder?)")
        args.config = stored
        config = options.resolve(args, "server")
        _check_address(args)
        return config
    config = options.resolve(args, "server")
    _check_address(args)
    round_spec(args, 1)  # every check of the round parameters before anything is written
    if (run_dir / "checkpoint.npz").exists() or (run_dir / "audit.jsonl").exists():
        raise ConfigError(f"{run_dir} already holds a run; add --resume to continue it, or choose another --run-dir")
    options.writable_folder(run_dir, "--run-dir")
    run_config = {t: body for t, body in config.items() if t != "network"}
    options.write_config(run_dir, run_config, "server")
    return config


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _check_address(args: argparse.Namespace) -> None:
    """--address as HOST:PORT that this machine can bind now, checked before anything is written: a port in
    use is named as such (gRPC's own message says only "Failed to bind"), and plaintext (--insecure) is
    served on a loopback address only."""
    import errno
    import socket

    options.check_port(args.address, allow_any=True)
    host, _, port_text = args.address.rpartition(":")
    if args.insecure and host not in _LOOPBACK_HOSTS:
        raise ConfigError(
            f"--insecure serves plaintext gRPC (no TLS, anyone can call it): only on a loopback address, "
            f"e.g. --address 127.0.0.1:{port_text}, not {args.address}"
        )
    port = int(port_text)
    if port == 0:
        return
    bare = host.strip("[]")
    try:
        addresses = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"--address {args.address}: the host {host!r} is not known ({exc.strerror})") from None
    for family, kind, proto, _, sockaddr in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is no conflict
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"port {args.address} is in use (another server?): stop that process or choose another "
                        "--address port"
                    ) from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise ConfigError(f"--address {args.address}: {host} is not an address of this machine") from None
                if exc.errno == errno.EACCES:
                    raise ConfigError(
                        f"--address {args.address}: binding port {port} needs privileges; choose a port above 1023"
                    ) from None
                raise


def server_main(args: argparse.Namespace) -> int:
    from mrff_secure.app.run_folder import NewRunFolder

    with NewRunFolder(Path(args.run_dir)) as run_folder:  # a failed start leaves no run behind
        return _serve(args, run_folder)


def _serve(args: argparse.Namespace, run_folder: NewRunFolder) -> int:
    from mrff_secure.data.schema import PublicSchema
    from mrff_secure.dp.config import default_delta
    from mrff_secure.pki import CertPaths, load_authority_public_key, load_revocations
    from mrff_secure.wire import signing
    from mrff_secure.wire.collector import quiet_collector
    from server.message_caps import MessageCaps
    from server.revocation import RevocationCheckingCoordinator
    from server.service import TlsFiles, create_server

    _resolve_server(args)
    resume, run_dir = args.resume, Path(args.run_dir)
    certs = CertPaths(args.certs)
    authority_public_key = load_authority_public_key(certs.identity_ca_pub)
    refuse_authority_key([certs.folder, run_dir], authority_public_key)  # W15: before anything else is read
    revoked = load_revocations(args.revoked, certs.folder, authority_public_key)
    if args.schema is not None:
        data = PublicSchema.load(args.schema)  # no user data in this process at all
    else:
        data = PublicSchema.of(options.load_dataset(args))  # the dataset files are read, only the schema is kept
    if args.delta is None:  # 1/n^1.1 over the dataset's users (as mrff train), at most the clients' default 1e-5
        args.delta = min(default_delta(data.num_users), NETWORK_MAX_DEFAULT_DELTA)
    if args.dp == "off" and args.secure_aggregation != "off":
        print(
            "NOTE --dp off: secure aggregation alone protects clients only against an honest-but-curious "
            "server (SECURITY.md)",
            file=sys.stderr,
            flush=True,
        )
    signing_key = signing.load_private_key(certs.signing_key)
    refused = _default_clients_refuse(args, args.min_clients, "--min-clients")
    if refused:  # the clients' policies are theirs: a warning, not a refusal
        print(f"WARNING {refused} (unless they accept weaker privacy)", file=sys.stderr, flush=True)
    spec = round_spec(args, data.maxlen)
    if args.target_epsilon is not None:
        spec = _calibrated(spec, args, data)
    coordinator = RevocationCheckingCoordinator(
        run_dir,
        _server_settings(args),
        options.model_config(args, data.maxlen),
        data,
        spec,
        signing_key,
        authority_public_key=authority_public_key,
        revoked=revoked,
        resume=resume,
        on_round_line=lambda line: print(line, flush=True),
    )
    tls = None if args.insecure else TlsFiles(certs.server_crt, certs.server_key, certs.ca_crt if args.mtls else None)
    if tls is None:
        print(
            "WARNING --insecure: plaintext gRPC, no TLS and no client certificates: anyone who can reach this "
            "port can call the server; only for debugging on loopback",
            file=sys.stderr,
            flush=True,
        )
    elif tls.client_ca is None:
        print(
            "WARNING --insecure-no-mtls: the server accepts TLS clients without a client certificate; any "
            "outsider who can reach this port can send it requests (W19 in SECURITY.md)",
            file=sys.stderr,
            flush=True,
        )
    caps = MessageCaps.for_run(
        coordinator.layout, spec, num_neighbours=args.num_neighbours, ceiling=args.max_upload_mib << 20
    )
    server, port = create_server(args.address, coordinator, tls=tls, caps=caps, max_workers=args.max_workers)
    host = args.address.rsplit(":", 1)[0]
    quiet_collector()  # the dataset and model are loaded: the calls' objects are what the collector sees
    server.start()
    write_json_atomic(
        run_dir / ENDPOINT_FILE, {"address": f"{host}:{port}", "pid": os.getpid(), "tls": tls is not None}
    )
    security = (
        "INSECURE" if tls is None else ("mutual TLS" if tls.client_ca is not None else "TLS, NO client certificates")
    )
    stopped_by: list[int] = []

    def terminate(signum: int, frame: FrameType | None) -> None:
        stopped_by.append(signum)
        coordinator.stop()

    signal.signal(signal.SIGTERM, terminate)  # before LISTENING: whoever reads it may send a signal at once
    signal.signal(signal.SIGINT, terminate)
    run_folder.started()
    print(
        f"LISTENING {host}:{port} run {coordinator.run_id} ({security}; largest request {caps.receive} bytes, "
        f"Enrol {caps.enrol})",
        flush=True,
    )
    driver = threading.Thread(target=coordinator.run, name="mrff-rounds", daemon=True)
    driver.start()
    while driver.is_alive():
        driver.join(0.5)
    linger_until = time.monotonic() + args.linger
    while coordinator.error is None and not coordinator.stopped and time.monotonic() < linger_until:
        if coordinator.all_saw_finish():  # every client has the end-of-run announcement
            break
        time.sleep(0.2)
    coordinator.stop()
    server.stop(grace=1.0).wait()
    coordinator.audit.close()
    if coordinator.error is not None:
        raise MrffError(f"coordinator failed: {coordinator.error}")
    from mrff_secure.audit_log import read_records
    from mrff_secure.run_summary import format_run_summary
    from server.results import write_results

    summary = write_results(run_dir)  # metrics.jsonl/.csv, summary.json, the plot, as mrff train writes them
    print(format_run_summary(summary, run_dir), flush=True)
    records = read_records(run_dir / "audit.jsonl")
    completed = sum(r.get("type") == "round" for r in records)
    aborted = sum(r.get("type") == "round_aborted" for r in records)
    planned = coordinator.settings.rounds
    finished = completed >= planned and any(r.get("type") == "run_finished" for r in records)  # exit 0 only then
    why = coordinator.unfinished or "the server was stopped"
    print(
        f"DONE {completed} of {planned} rounds completed, {aborted} aborted; "
        + (
            "run finished"
            if finished
            else f"run NOT FINISHED ({why}): continue it with `mrff server --run-dir {run_dir} --resume` and the "
            "same --address and --certs (clients retry for their --retry-timeout; restart any that gave up)"
        )
        + f"; model_digest={coordinator.model_digest()}",
        flush=True,
    )
    if stopped_by:  # Ctrl-C (130) or SIGTERM (143): the run folder is consistent, --resume continues it
        print(f"mrff server: interrupted; resume with mrff server --run-dir {run_dir} --resume", file=sys.stderr)
        return 128 + stopped_by[0]
    return 0 if finished else 1


# ------------------------------------------------------------------ run-local
def _run_local_policy(args: argparse.Namespace) -> list[str]:
    """run-local plays both sides: its clients accept what the operator chose for its server, and no less.
    Where that is weaker than a client's safe defaults (DP off, a chosen noise multiplier whose epsilon the
    default cap would not admit, tiny groups) the clients say so on every round."""
    weaker: list[str] = []
    if args.dp == "off":
        weaker += ["--allow-dp-off", "--min-noise-multiplier", "0", "--max-epsilon", "inf"]
    elif args.noise_multiplier is not None:  # the operator chose the noise: its epsilon is the server's to report
        weaker += ["--min-noise-multiplier", str(min(args.noise_multiplier, 0.5)), "--max-epsilon", "inf"]
    elif args.target_epsilon is not None and args.target_epsilon > 10.0:
        weaker += ["--max-epsilon", str(args.target_epsilon)]
    if args.secure_aggregation == "off":
        weaker.append("--allow-plain")
    if weaker or args.min_group_size < 5 or args.corrupt_neighbours < 2:
        weaker.append("--accept-weaker-privacy")
    return weaker


class _ProcessLines:
    """Every child process's output, line by line as it comes, each line whole and prefixed with its source
    (`server | ...`, `clients 0-9 | ...`), and the run's progress (rounds done of the total, with an ETA)."""

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.lock = threading.Lock()
        self.listening: str | None = None  # the server's LISTENING line, once it listens
        self.server_lines: list[str] = []
        self.rounds_done = 0
        self.started = time.monotonic()
        self.width = 0
        self.readers: list[threading.Thread] = []

    def follow(self, process: subprocess.Popen, label: str) -> None:
        self.width = max(self.width, len(label))
        reader = threading.Thread(target=self._read, args=(process, label), name=f"lines-{label}", daemon=True)
        self.readers.append(reader)
        reader.start()

    def say(self, label: str, line: str) -> None:
        with self.lock:
            print(f"{label:<{self.width}} | {line}", flush=True)

    def _read(self, process: subprocess.Popen, label: str) -> None:
        assert process.stdout is not None  # stdout=PIPE always opens one
        for raw in process.stdout:
            line = raw.rstrip("\n")
            if label == "server":
                self.server_lines.append(line)
                if line.startswith("LISTENING"):
                    self.listening = line
                    self.started = time.monotonic()
            self.say(label, line)
            if label == "server" and line.startswith("[ROUND ") and (" completed" in line or " ABORTED" in line):
                self._progress(completed=" completed" in line)

    def _progress(self, *, completed: bool) -> None:
        self.rounds_done += completed
        elapsed = time.monotonic() - self.started
        done = self.rounds_done
        eta = f", about {_duration(elapsed / done * (self.rounds - done))} left" if 0 < done < self.rounds else ""
        self.say("run-local", f"{done}/{self.rounds} rounds done in {_duration(elapsed)}{eta}")

    def drain(self, timeout: float = 10.0) -> None:
        for reader in self.readers:
            reader.join(timeout)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _prepare_run_local_folder(run_dir: Path, overwrite: bool) -> None:
    """An empty or missing --run-dir; with --overwrite, an earlier run-local folder is replaced (never a folder
    that is not one: --overwrite deletes it)."""
    import shutil

    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir} is a file, not a folder")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if not overwrite:
        raise ConfigError(
            f"--run-dir {run_dir} is not an empty folder; add --overwrite to replace it, or choose a new one"
        )
    if not ((run_dir / CONFIG_FILE).is_file() and (run_dir / "certs").is_dir()):
        raise ConfigError(
            f"--overwrite: {run_dir} does not look like a run-local folder (no config.toml and certs/); "
            "not deleting it: choose a new --run-dir"
        )
    shutil.rmtree(run_dir)


def _default_clients_refuse(args: argparse.Namespace, participants: int, flag: str) -> str | None:
    """Why clients with the default policy would refuse every round of `participants` clients, or None. A
    round sizes its noise for n_min survivors, and those beyond the --corrupt-neighbours colluding ones must
    be at least the policy's minimum of honest noise shares."""
    from client.policy import SAFE_MIN_HONEST_SHARES
    from mrff_secure.dp.config import min_survivors

    if args.dp != "distributed":
        return None
    dropout, colluding = args.max_dropout_fraction, args.corrupt_neighbours
    n_min = min_survivors(participants, dropout)
    if n_min - colluding >= SAFE_MIN_HONEST_SHARES:
        return None
    smallest = next(n for n in range(3, 1 << 20) if min_survivors(n, dropout) - colluding >= SAFE_MIN_HONEST_SHARES)
    return (
        f"{flag} {participants}: a round of {participants} clients sizes its noise for {n_min} survivors "
        f"(--max-dropout-fraction {dropout:g}), {n_min - colluding} beyond the {colluding} colluding ones "
        f"(--corrupt-neighbours); the clients' default policy needs {SAFE_MIN_HONEST_SHARES} and would refuse every "
        f"round: give {flag} {smallest} or more"
    )


def run_local_main(args: argparse.Namespace) -> int:
    from mrff_secure.app.run_folder import NewRunFolder

    config = options.resolve(args, "run-local")
    check_int("--client-processes", args.client_processes, low=1)
    check_int("--clients", args.clients, low=3)
    check_number("--timeout", args.timeout, low=0.0, low_open=True)
    round_spec(args, 1)  # the server's own checks, before any process starts
    refused = _default_clients_refuse(args, args.clients, "--clients")  # run-local's clients keep that policy
    if refused:
        raise ConfigError(refused)
    if args.insecure:
        print("WARNING --insecure: plaintext gRPC on 127.0.0.1, for debugging only", file=sys.stderr, flush=True)
    run_dir = Path(args.run_dir)
    _prepare_run_local_folder(run_dir, args.overwrite)
    with NewRunFolder(run_dir) as run_folder:  # a start that fails leaves no run behind
        return _run_local(args, config, run_dir, run_folder)


def _run_local(args: argparse.Namespace, config: dict, run_dir: Path, run_folder: NewRunFolder) -> int:
    from mrff_secure.audit_log import read_records, verify
    from mrff_secure.pki import CertPaths, issue_state_credentials, make_authority, make_dev_pki, publish_authority

    certs = CertPaths(run_dir / "certs")
    make_dev_pki(certs.folder)
    # the identity authority in a folder of its own, never named to the server process (W15)
    authority = make_authority(run_dir / "authority")
    publish_authority(authority, certs.folder)
    issue_state_credentials(authority, list(range(args.clients)), run_dir / "clients")
    config["federation"]["min_clients"] = max(args.min_clients, args.clients)
    # one configuration for both sides: the server and every client read the same file
    shared = options.write_config(run_dir, config, "run-local")
    security = ["--insecure"] if args.insecure else []
    verbose = ["-v"] if args.verbose else []
    cmd = [sys.executable, "-m", "mrff_secure.app.cli"]
    child_env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    lines = _ProcessLines(args.rounds)
    server_args = ["server", "--config", str(shared), "--run-dir", str(run_dir / "server")]
    server_args += ["--address", "127.0.0.1:0", "--certs", str(certs.folder), "--linger", "30"]
    server = subprocess.Popen(
        cmd + server_args + security + verbose,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env,
    )
    lines.follow(server, "server")
    clients: list[subprocess.Popen] = []
    deadline = time.monotonic() + args.timeout
    try:
        while lines.listening is None:  # what the server says before it listens (calibration) is shown
            if server.poll() is not None:
                lines.drain()
                if lines.listening is None:
                    failure = ConfigError if server.returncode == 2 else MrffError
                    raise failure(f"the server did not start (exit code {server.returncode}; its error is above)")
            if time.monotonic() > deadline:
                raise MrffError(f"the server did not listen within {args.timeout:.0f}s")
            time.sleep(0.05)
        run_folder.started()
        address = lines.listening.split()[1]
        # run-local plays both sides: its clients' policy accepts what its server proposes (and no less)
        client_policy = [
            "--min-group-size",
            str(args.min_group_size),
            "--corrupt-neighbours",
            str(args.corrupt_neighbours),
        ]
        client_policy += _run_local_policy(args)
        if args.insecure_reproducible_noise:
            client_policy.append("--insecure-reproducible-noise")
        per = -(-args.clients // args.client_processes)
        seed = args.client_seed if args.client_seed is not None else int.from_bytes(os.urandom(4), "big")
        for i in range(args.client_processes):
            lo, hi = i * per, min(args.clients, (i + 1) * per) - 1
            if lo > hi:
                break
            client_args = ["client", "--address", address, "--users", f"{lo}-{hi}", "--certs", str(certs.folder)]
            client_args += [
                "--state-dir",
                str(run_dir / "clients"),
                "--client-seed",
                str(seed),
                "--config",
                str(shared),
            ]
            client = subprocess.Popen(
                cmd + client_args + security + verbose + client_policy,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=child_env,
            )
            clients.append(client)
            lines.follow(client, f"clients {lo}-{hi}")
        while any(p.poll() is None for p in clients + [server]):
            failed = [p.returncode for p in clients + [server] if p.poll() not in (None, 0)]
            if failed:
                raise MrffError(f"a process failed (exit codes {failed}); stopping the others")
            if time.monotonic() > deadline:
                raise MrffError(f"run-local did not finish within {args.timeout:.0f}s")
            time.sleep(0.2)
    except KeyboardInterrupt:
        # the terminal's Ctrl-C reached every child too (one process group): let the server write its results
        _stop(clients + [server], signal.SIGINT, grace=30.0)
        lines.drain()
        raise
    finally:
        _stop(clients + [server], signal.SIGTERM, grace=10.0)
        lines.drain()
    codes = [p.returncode for p in clients]
    from mrff_secure.wire import signing

    report = verify(run_dir / "server" / "audit.jsonl", signing.load_public_key(certs.signing_pub))
    rounds = [r for r in read_records(run_dir / "server" / "audit.jsonl") if r["type"] in ("round", "round_aborted")]
    completed = sum(r["type"] == "round" for r in rounds)
    print(
        f"run-local: {completed}/{len(rounds)} rounds completed; audit log "
        f"{'intact' if report.ok else 'BROKEN: ' + report.problem}; client exit codes {codes}; "
        f"server {server.returncode}; run folder {run_dir}",
        flush=True,
    )
    return 0 if server.returncode == 0 and all(c == 0 for c in codes) and report.ok else 1


def _stop(processes: list[subprocess.Popen], signum: int, *, grace: float) -> None:
    """Send `signum` to those still running, wait up to `grace` seconds for them, then kill what is left."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signum)
    end = time.monotonic() + grace
    for p in processes:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

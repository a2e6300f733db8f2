"""`mrff server`, `mrff certs`, `mrff audit-log verify` and `mrff run-local`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from mrff_secure.atomic import write_json_atomic
from mrff_secure.errors import ConfigError, MrffError
from server import options

DEFAULT_ADDRESS = "127.0.0.1:50051"
SETTINGS_FILE = "server.json"
ENDPOINT_FILE = "endpoint.json"


def _add_tls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--certs", type=Path, default=Path("certs"),
                   help="folder written by `mrff certs` (server.crt/key, ca.crt, signing.key, identity-ca.pub)")
    p.add_argument("--mtls", action="store_true", help="require client certificates signed by CERTS/ca.crt")
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC (no TLS): only for debugging on loopback")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the gRPC coordinator (TLS by default)")
    p.add_argument("--run-dir", type=Path, help="folder of the checkpoint and the audit log (new run)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR after a crash")
    p.add_argument("--address", default=DEFAULT_ADDRESS, help="host:port to bind (port 0 = any free port)")
    _add_tls_arguments(p)
    p.add_argument("--max-upload-mib", type=int, default=64, help="largest accepted client message")
    p.add_argument("--max-workers", type=int, default=2048, help="request threads (one per waiting client)")
    p.add_argument("--linger", type=float, default=60.0,
                   help="after the last round, serve until every client has the end-of-run message, at most this long")
    p.add_argument("--schema", type=Path, help="the dataset's public schema (`mrff schema`): the server then reads "
                                               "no dataset file (default: derive it from --dataset)")
    p.add_argument("-v", "--verbose", action="store_true")
    options.add(p, options.DATA)
    options.add(p, options.MODEL)
    options.add(p, options.ROUNDS)
    p.set_defaults(handler=server_main)

    sc = sub.add_parser("schema", help="write a dataset's public schema (no user rows) for `mrff server --schema`")
    sc.add_argument("--out", type=Path, required=True)
    options.add(sc, options.DATA)
    sc.set_defaults(handler=schema_main)

    c = sub.add_parser("certs", help="make a development PKI (TLS CA, server/client certificates, signing key, "
                                     "identity authority); `mrff certs issue-client` certifies clients")
    c.add_argument("--out", type=Path, default=Path("certs"))
    c.add_argument("--host", action="append", default=[], help="extra server host name or IP (repeatable)")
    c.add_argument("--overwrite", action="store_true")
    c.set_defaults(handler=certs_main)
    csub = c.add_subparsers(dest="certs_command")
    i = csub.add_parser("issue-client", help="the identity authority certifies client identity keys (offline)",
                        description="Sign (client id -> identity key) with CERTS/identity-ca.key. One client: "
                                    "--client-id N --identity-pub FILE --out FILE. Development: --users 0-99 "
                                    "--state-dir DIR makes missing keys in DIR/user-<id>/ and writes each "
                                    "credential.bin beside them. An id bound to another key is refused without --force.")
    i.add_argument("--certs", type=Path, default=Path("certs"), help="folder holding identity-ca.key")
    i.add_argument("--client-id", type=int, help="one client: its id (with --identity-pub and --out)")
    i.add_argument("--identity-pub", type=Path,
                   help="one client: its Ed25519 identity public key (PEM, written by `mrff client-key`)")
    i.add_argument("--out", type=Path, help="one client: where to write its credential")
    i.add_argument("--users", help="development form: ids like 0-99; keys and credentials in --state-dir")
    i.add_argument("--state-dir", type=Path, help="development form: the clients' state folder (user-<id>/)")
    i.add_argument("--force", action="store_true", help="replace a credential that binds the id to another key")
    i.set_defaults(handler=issue_client_main)

    a = sub.add_parser("audit-log", help="inspect a run's hash-chained audit log")
    asub = a.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser("verify", help="check every record's digest and the chain")
    v.add_argument("run_dir", type=Path)
    v.set_defaults(handler=audit_verify_main)

    r = sub.add_parser("run-local", help="a server and P client processes on loopback, end to end")
    r.add_argument("--client-processes", type=int, default=2)
    r.add_argument("--users", type=int, default=20, help="logical clients, spread over the processes")
    r.add_argument("--run-dir", type=Path, default=Path("runs/local"))
    r.add_argument("--insecure", action="store_true")
    r.add_argument("--timeout", type=float, default=3600.0, help="give up after this many seconds")
    r.add_argument("--client-seed", type=int, default=None)
    r.add_argument("--insecure-reproducible-noise", action="store_true",
                   help="DEBUGGING ONLY, NOT PRIVATE: clients derive their DP noise from --client-seed")
    options.add(r, options.DATA)
    options.add(r, options.MODEL)
    options.add(r, options.ROUNDS)
    r.set_defaults(handler=run_local_main)


# ------------------------------------------------------------------ certs / audit
def certs_main(args: argparse.Namespace) -> int:
    from server.certs import make_dev_pki

    paths = make_dev_pki(args.out, hosts=args.host, overwrite=args.overwrite)
    print(f"wrote the development PKI to {paths.folder}: ca.crt, server.crt/key, client.crt/key, "
          "signing.key/pub, identity-ca.key/pub (keys mode 0600; for development only; keep identity-ca.key "
          "offline and certify clients with `mrff certs issue-client`)")
    return 0


def schema_main(args: argparse.Namespace) -> int:
    from mrff_secure.data.schema import PublicSchema

    data = options.load_data(args)
    schema = PublicSchema.of(data)
    schema.save(args.out)
    print(f"wrote the public schema of {schema.name} to {args.out}: {schema.item_attributes.num_rows} items, "
          f"{schema.user_attributes.num_fields} user fields, maxlen {schema.maxlen}, population {schema.population} "
          "(no user rows)")
    return 0


def issue_client_main(args: argparse.Namespace) -> int:
    from client.worker import parse_users
    from server.certs import CertPaths, issue_client_credential, issue_state_credentials, load_identity_public_key

    paths = CertPaths(args.certs)
    if args.users is not None:
        if args.state_dir is None or args.client_id is not None or args.out is not None or args.identity_pub:
            raise ConfigError("the development form takes --users and --state-dir (not --client-id, --identity-pub "
                              "or --out)")
        count = issue_state_credentials(paths, parse_users(args.users), args.state_dir, force=args.force)
        print(f"issued {count} credentials into {args.state_dir}/user-<id>/credential.bin")
        return 0
    if args.client_id is None or args.identity_pub is None or args.out is None or args.state_dir is not None:
        raise ConfigError("give --client-id, --identity-pub and --out (or, for development, --users with --state-dir)")
    key = load_identity_public_key(args.identity_pub)
    issue_client_credential(paths, args.client_id, key, args.out, force=args.force)
    print(f"issued the credential of client {args.client_id} to {args.out}: copy it to the client's "
          f"STATE_DIR/user-{args.client_id}/credential.bin")
    return 0


def audit_verify_main(args: argparse.Namespace) -> int:
    from server.audit import verify

    report = verify(Path(args.run_dir) / "audit.jsonl")
    if report.ok:
        print(f"ok: {report.records} records, chain intact, last digest {report.last_digest}")
        return 0
    print(f"BROKEN after {report.records} good records: {report.problem}")
    return 1


# ------------------------------------------------------------------ server
def _server_settings(args: argparse.Namespace):
    from server.coordinator import ServerSettings

    return ServerSettings(rounds=args.rounds, seed=args.seed, client_fraction=args.client_fraction,
                          min_clients=args.min_clients, secure=args.aggregation == "secure",
                          train_timeout=args.train_timeout, stage_timeout=args.stage_timeout, dp_delta=args.dp_delta,
                          max_dropout_fraction=args.max_dropout_fraction, num_neighbours=args.num_neighbours,
                          threshold=args.threshold)


def _calibrated(spec, args: argparse.Namespace, data):
    """The spec with z calibrated to --target-epsilon over --rounds, by the accountant the server then uses,
    for the expected participants per round: max(--min-clients, the dataset's users x --client-fraction)."""
    import dataclasses

    from mrff_secure.dp.config import min_survivors
    from mrff_secure.dp.release import participants_per_round
    from mrff_secure.federation.client_update import build_global
    from mrff_secure.federation.update_vector import UpdateLayout
    from server.privacy import calibrate

    model, _ = build_global(options.model_config(args, data.maxlen), data, args.seed)
    n = max(args.min_clients, participants_per_round(data.num_users, args.client_fraction))
    sized = dataclasses.replace(spec, min_survivors=min_survivors(n, args.max_dropout_fraction))
    z = calibrate(sized, UpdateLayout.from_model(model), participants=n, target_epsilon=args.target_epsilon,
                  rounds=args.rounds, delta=args.dp_delta)
    print(f"CALIBRATED noise multiplier {z:.6g} for epsilon {args.target_epsilon} over {args.rounds} rounds of "
          f"{n} clients (delta {args.dp_delta:.3g}, zero-out adjacency)", flush=True)
    return dataclasses.replace(spec, noise_multiplier=z)


def server_main(args: argparse.Namespace) -> int:
    from mrff_secure.data.schema import PublicSchema
    from mrff_secure.dp.config import default_delta
    from server.certs import CertPaths, load_authority_public_key
    from server.coordinator import Coordinator
    from server.service import TlsFiles, create_server
    from mrff_secure.wire import signing

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, force=True,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if (args.run_dir is None) == (args.resume is None):
        raise ConfigError("give exactly one of --run-dir DIR (new run) and --resume RUN_DIR")
    resume = args.resume is not None
    run_dir = Path(args.resume if resume else args.run_dir)
    if resume:
        saved = run_dir / SETTINGS_FILE
        try:
            stored = json.loads(saved.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot resume: {saved} is missing or unreadable ({exc})") from exc
        for key in stored:  # the run's own settings win; deployment flags (address, TLS) come from the command
            setattr(args, key, Path(stored[key]) if key in ("data_dir", "schema") and stored[key] else stored[key])
    else:
        keys = [flag[2:].replace("-", "_") for flag, _ in options.DATA + options.MODEL + options.ROUNDS] + ["schema"]
        run_dir.mkdir(parents=True, exist_ok=True)
        if (run_dir / "checkpoint.npz").exists():
            raise ConfigError(f"{run_dir} already holds a run; use --resume {run_dir} or another --run-dir")
        write_json_atomic(run_dir / SETTINGS_FILE, {k: (str(v) if isinstance(v, Path) else v)
                                                    for k, v in vars(args).items() if k in keys})
    if args.schema is not None:
        data = PublicSchema.load(args.schema)  # no user data in this process at all
    else:
        data = PublicSchema.of(options.load_data(args))  # the dataset files are read, only the schema is kept
    if args.dp_delta is None:
        args.dp_delta = default_delta(data.num_users)  # as mrff train: 1/n^1.1 over the dataset's users
    if args.dp == "off" and args.aggregation == "secure":
        print("NOTE --dp off: secure aggregation alone protects clients only against an honest-but-curious "
              "server (SECURITY.md)", file=sys.stderr, flush=True)
    certs = CertPaths(args.certs)
    signing_key = signing.load_private_key(certs.signing_key)
    spec = options.round_spec(args, data.maxlen)
    if getattr(args, "target_epsilon", None) is not None:
        spec = _calibrated(spec, args, data)
    coordinator = Coordinator(run_dir, _server_settings(args), options.model_config(args, data.maxlen), data,
                              spec, signing_key, authority_public_key=load_authority_public_key(certs.identity_ca_pub),
                              resume=resume)
    tls = None if args.insecure else TlsFiles(certs.server_crt, certs.server_key, certs.ca_crt if args.mtls else None)
    server, port = create_server(args.address, coordinator, tls=tls,
                                 max_upload_bytes=args.max_upload_mib << 20, max_workers=args.max_workers)
    host = args.address.rsplit(":", 1)[0]
    server.start()
    write_json_atomic(run_dir / ENDPOINT_FILE, {"address": f"{host}:{port}", "pid": os.getpid(),
                                                "tls": tls is not None})
    print(f"LISTENING {host}:{port} run {coordinator.run_id} ({'TLS' if tls else 'INSECURE'}"
          f"{', mutual TLS' if args.mtls and tls else ''})", flush=True)

    def terminate(signum, frame) -> None:
        coordinator.stop()

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGINT, terminate)
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
    print(f"DONE rounds={coordinator.next_round} model_digest={coordinator.model_digest()}", flush=True)
    return 0


# ------------------------------------------------------------------ run-local
def run_local_main(args: argparse.Namespace) -> int:
    from server.audit import read_records, verify
    from server.certs import CertPaths, issue_state_credentials, make_dev_pki

    if args.client_processes < 1 or args.users < 3:
        raise ConfigError("run-local needs --client-processes >= 1 and --users >= 3")
    run_dir = Path(args.run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"{run_dir} is not empty; choose a new --run-dir")
    certs = CertPaths(run_dir / "certs")
    make_dev_pki(certs.folder)
    issue_state_credentials(certs, list(range(args.users)), run_dir / "clients")
    data_argv = options.to_argv(args, options.DATA)
    args.min_clients = max(args.min_clients, args.users)
    rounds_argv = options.to_argv(args, options.ROUNDS)
    security = ["--insecure"] if args.insecure else []
    cmd = [sys.executable, "-m", "mrff_secure.cli"]
    server = subprocess.Popen(cmd + ["server", "--run-dir", str(run_dir / "server"), "--address", "127.0.0.1:0",
                                     "--certs", str(certs.folder), "--linger", "30"] + security + data_argv
                              + options.to_argv(args, options.MODEL) + rounds_argv,
                              stdout=subprocess.PIPE, text=True)
    clients: list[subprocess.Popen] = []
    try:
        line = server.stdout.readline()
        if not line.startswith("LISTENING"):
            raise MrffError(f"the server did not start (said {line!r})")
        address = line.split()[1]
        print(line.strip(), flush=True)
        # run-local plays both sides: its clients' policy accepts what its server proposes (and no less)
        client_policy = ["--min-group-size", str(args.min_group_size)]
        if args.aggregation == "plain":
            client_policy.append("--allow-plain")
        if args.insecure_reproducible_noise:
            client_policy.append("--insecure-reproducible-noise")
        per = -(-args.users // args.client_processes)
        seed = args.client_seed if args.client_seed is not None else int.from_bytes(os.urandom(4), "big")
        for i in range(args.client_processes):
            lo, hi = i * per, min(args.users, (i + 1) * per) - 1
            if lo > hi:
                break
            clients.append(subprocess.Popen(cmd + ["client", "--server", address, "--users", f"{lo}-{hi}",
                                                   "--certs", str(certs.folder), "--state-dir", str(run_dir / "clients"),
                                                   "--client-seed", str(seed)] + security + data_argv
                                            + client_policy))
        deadline = time.monotonic() + args.timeout
        while any(p.poll() is None for p in clients + [server]):
            failed = [p.returncode for p in clients + [server] if p.poll() not in (None, 0)]
            if failed:
                raise MrffError(f"a process failed (exit codes {failed}); stopping the others")
            if time.monotonic() > deadline:
                raise MrffError(f"run-local did not finish within {args.timeout:.0f}s")
            time.sleep(0.5)
        codes = [p.returncode for p in clients]
        server_code = server.returncode
        tail = server.stdout.read()
    finally:
        for p in clients + [server]:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    print(tail.strip(), flush=True)
    report = verify(run_dir / "server" / "audit.jsonl")
    rounds = [r for r in read_records(run_dir / "server" / "audit.jsonl") if r["type"] in ("round", "round_aborted")]
    completed = sum(r["type"] == "round" for r in rounds)
    print(f"run-local: {completed}/{len(rounds)} rounds completed; audit log "
          f"{'intact' if report.ok else 'BROKEN: ' + report.problem}; client exit codes {codes}; server {server_code}")
    return 0 if server_code == 0 and all(c == 0 for c in codes) and report.ok else 1

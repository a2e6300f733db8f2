"""`mrff client`: one process hosting many logical clients (--users 0-99)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import grpc

from mrff_secure.errors import ConfigError
from server import options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="run logical clients against `mrff server` (TLS by default)")
    p.add_argument("--server", default="127.0.0.1:50051", help="host:port of the coordinator")
    p.add_argument("--users", required=True, help="user ids hosted here, e.g. 0-99 or 1,5,9")
    p.add_argument("--state-dir", type=Path, default=Path("client-state"),
                   help="per-user keys and private parameters (user-<id>/)")
    p.add_argument("--certs", type=Path, default=Path("certs"),
                   help="folder with ca.crt, signing.pub, enrol.token (and client.crt/key for --mtls)")
    p.add_argument("--ca", type=Path, help="CA certificate that signed the server's (default: CERTS/ca.crt)")
    p.add_argument("--signing-pub", type=Path, help="server's parameter-signing key (default: CERTS/signing.pub)")
    p.add_argument("--token-file", type=Path, help="enrolment token (default: CERTS/enrol.token)")
    p.add_argument("--mtls", action="store_true", help="present CERTS/client.crt (server runs with --mtls)")
    p.add_argument("--server-name", help="TLS name to check in the server's certificate (default: the host)")
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC: only for debugging on loopback")
    p.add_argument("--retry-timeout", type=float, default=120.0, help="give up after this long without a server")
    p.add_argument("--client-seed", type=int, default=None,
                   help="seed of rounding, noise and dropout (default: random; fix it only for reproducibility tests)")
    p.add_argument("--pause-after", metavar="ROUND:PHASE:STAGE",
                   help="fault injection for tests: stop after submitting this stage and wait to be killed")
    p.add_argument("-v", "--verbose", action="store_true")
    options.add(p, options.DATA)
    p.set_defaults(handler=client_main)


def client_main(args: argparse.Namespace) -> int:
    from client.worker import Connection, parse_pause, parse_users, run_process
    from server.certs import CertPaths, read_file, read_token
    from mrff_secure.wire import signing

    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    users = parse_users(args.users)
    certs = CertPaths(args.certs)
    credentials = None
    if not args.insecure:
        ca = read_file(args.ca or certs.ca_crt, "CA certificate")
        if args.mtls:
            credentials = grpc.ssl_channel_credentials(ca, read_file(certs.client_key, "client key"),
                                                       read_file(certs.client_crt, "client certificate"))
        else:
            credentials = grpc.ssl_channel_credentials(ca)
    elif args.mtls:
        raise ConfigError("--mtls needs TLS; drop --insecure")
    connection = Connection(target=args.server, credentials=credentials,
                            enrol_token=read_token(args.token_file or certs.token),
                            signing_key=signing.load_public_key(args.signing_pub or certs.signing_pub),
                            retry_timeout=args.retry_timeout, server_name=args.server_name)
    seed = args.client_seed if args.client_seed is not None else int.from_bytes(os.urandom(8), "big") >> 1
    data = options.load_data(args)
    pause = parse_pause(args.pause_after) if args.pause_after else None
    return run_process(users, connection, args.state_dir, data, client_seed=seed, pause=pause)

"""`mrff client`: one process hosting many logical clients (--users 0-99)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from mrff_secure.app import options
from mrff_secure.errors import ConfigError

if TYPE_CHECKING:
    from client.policy import ClientPolicy
    from mrff_secure.pki import RevocationList


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="run logical clients against `mrff server` (mutual TLS by default)")
    p.add_argument("--users", required=True, help="user ids hosted here, e.g. 0-99 or 1,5,9")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path("client-state"),
        help="per-user keys and private parameters (user-<id>/; default: client-state)",
    )
    p.add_argument("--ca", type=Path, help="CA certificate that signed the server's (default: CERTS/ca.crt)")
    p.add_argument("--signing-pub", type=Path, help="server's parameter-signing key (default: CERTS/signing.pub)")
    p.add_argument(
        "--identity-ca", type=Path, help="the identity authority's public key (default: CERTS/identity-ca.pub)"
    )
    p.add_argument("--server-name", help="TLS name to check in the server's certificate (default: the host)")
    p.add_argument(
        "--revoked",
        type=Path,
        help="the identity authority's signed revocation list (default: CERTS/revoked.json if there is one): "
        "a user whose key it revokes refuses to start",
    )
    p.add_argument(
        "--client-seed",
        type=int,
        default=None,
        help="seed of local training's dropout (default: random; fix it only for reproducibility tests)",
    )
    g = p.add_argument_group("privacy policy (what this client refuses, whatever the server proposes)")
    g.add_argument("--policy", type=Path, help="JSON file of policy fields (client/policy.py); flags override it")
    g.add_argument("--min-participants", type=int, help="the least participants of a round (default: the policy's)")
    g.add_argument(
        "--corrupt-neighbours",
        type=int,
        help="c_max: colluding neighbours to withstand (2t - k > c_max) and colluding survivors whose noise "
        "shares are not counted (default: 2)",
    )
    g.add_argument("--min-survivors", type=int, help="the least survivors an unmask request may name")
    g.add_argument("--min-noise-multiplier", type=float, help="refuse rounds with less noise (default: 0.5)")
    g.add_argument("--max-clip", type=float, help="refuse rounds with a larger clip bound")
    g.add_argument(
        "--min-group-size",
        type=int,
        dest="policy_min_group_size",
        help="the least minimum group size accepted (default 5)",
    )
    g.add_argument("--require-dp", action="store_true", help="refuse rounds with DP off (the default)")
    g.add_argument(
        "--allow-dp-off",
        action="store_true",
        help="accept rounds with DP off (no guarantee against a malicious server; needs --min-noise-multiplier 0, "
        "--max-epsilon inf and --accept-weaker-privacy)",
    )
    g.add_argument(
        "--max-epsilon",
        type=float,
        help="the cap of this client's own ledger over every release of its data (default 10; inf: no cap)",
    )
    g.add_argument(
        "--max-aborted-sessions",
        type=int,
        help="sessions of one round that may end before this client sends anything (default 2)",
    )
    g.add_argument(
        "--min-honest-shares",
        type=int,
        help="the least noise shares beyond the c_max colluding survivors (default 3)",
    )
    g.add_argument(
        "--accept-weaker-privacy",
        action="store_true",
        help="allow policy values below the safe defaults; the client then warns on every round",
    )
    g.add_argument("--allow-plain", action="store_true", help="accept unmasked aggregation (benchmarks only)")
    g.add_argument(
        "--no-evaluation",
        action="store_true",
        help="send zeros, not this client's held-out scores, to the federated evaluation (a DP release "
        "in the run's epsilon; policy fields join_evaluation, max_evaluations, allow_exact_evaluation; README: "
        "federated evaluation)",
    )
    p.add_argument(
        "--pause-after",
        metavar="ROUND:PHASE:STAGE",
        help="fault injection for tests: stop after submitting this stage and wait to be killed",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level, with gRPC's own lines")
    options.add_options(p, "client")
    p.set_defaults(handler="mrff_secure.app.client_command:client_main")

    k = sub.add_parser(
        "client-key",
        help="make the users' identity keys and export their public keys for the "
        "identity authority (`mrff certs issue-client --identity-pub`)",
    )
    k.add_argument("--users", required=True, help="user ids, e.g. 0-99 or 1,5,9")
    k.add_argument(
        "--state-dir",
        type=Path,
        default=Path("client-state"),
        help="the clients' state folder: keys are made in user-<id>/identity.key if missing (default: client-state)",
    )
    k.add_argument("--out-dir", type=Path, required=True, help="where to write user-<id>.pub (public keys only)")
    k.set_defaults(handler="mrff_secure.app.client_command:client_key_main")


def client_key_main(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization

    from mrff_secure.atomic import write_bytes_atomic
    from mrff_secure.checks import parse_users
    from mrff_secure.pki import IdentityFiles  # not the client's state: no torch for a key

    users = parse_users(args.users)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for user in users:
        public = IdentityFiles(args.state_dir, user).identity_key().public_key()
        write_bytes_atomic(
            args.out_dir / f"user-{user}.pub",
            public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        )
    print(
        f"wrote {len(users)} public keys to {args.out_dir}/user-<id>.pub: send them to the identity authority "
        f"(`mrff certs issue-client --client-id ID --identity-pub user-ID.pub --out credential.bin`) and put each "
        f"credential in {args.state_dir}/user-<id>/credential.bin"
    )
    return 0


def check_credentials(
    users: list[int], state_dir: Path, authority_public_key: bytes, revoked: RevocationList | None = None
) -> None:
    """Refuse to start unless every hosted user holds the identity authority's credential for its own key,
    unexpired and not revoked."""
    from client.state import UserStore
    from mrff_secure.errors import CheckpointError

    problems = []
    for user in users:
        try:
            UserStore(state_dir, user).credential(authority_public_key, revoked)
        except CheckpointError as exc:
            problems.append(str(exc))
    if problems:
        more = f" ({len(problems) - 1} more users have the same problem or another)" if len(problems) > 1 else ""
        raise ConfigError(f"{problems[0]}{more}")


# What the [privacy] table of `mrff client --config FILE` means to a client: the least it accepts, as policy fields
# (the server proposes; the client refuses a round below them). A value that lowers a safe default is refused
# unless --accept-weaker-privacy is given, as for a policy file or a flag: a configuration file never weakens the
# client silently.
CONFIG_POLICY_KEYS = {
    "dp": "dp_modes",  # distributed: required; off: DP off also accepted (weaker); local: not run over a network
    "noise_multiplier": "min_noise_multiplier",  # the least noise multiplier a round may have
    "clip": "max_clip",  # the largest clip bound a round may have
    "min_group_size": "min_group_size",  # the least minimum group size a round may have
    "corrupt_neighbours": "corrupt_neighbours",  # c_max the client's checks and accounting assume
    "secure_aggregation": "allow_plain",  # on: required; off: plain aggregation also accepted (weaker)
}
"""[privacy] keys that describe how the server runs the mechanism, not what a client accepts: named in one NOTE."""
CONFIG_SERVER_ONLY = (
    "target_epsilon",
    "delta",  # the server's accounting; the client's ledger keeps its policy's delta (--policy delta)
    "mechanism",
    "max_dropout_fraction",
    "modulus_bits",
    "count_cap",
    "noise_sampling",
    "clip_from_private_data",
)
CONFIG_CLIENT_OPTIONS = ("insecure_reproducible_noise",)  # read by options.resolve, as the flag of that name


def config_policy(path: Path) -> tuple[dict[str, object], list[str]]:
    """The policy fields the [privacy] table of `path` sets (CONFIG_POLICY_KEYS), and the keys it holds that are the
    server's alone (CONFIG_SERVER_ONLY). Each value is checked as `mrff server` checks it; a value no client can
    use (dp = "local") is refused, naming the key and the file."""
    table = options.load_toml(path).get("privacy", {})
    fields: dict[str, object] = {}
    server_only = []
    for key, raw in table.items():
        source = f"privacy.{key} in {path}"
        value = options.BY_KEY[f"privacy.{key}"].check(raw, source)
        if key in CONFIG_CLIENT_OPTIONS:
            continue
        if key in CONFIG_SERVER_ONLY:
            server_only.append(key)
        elif key not in CONFIG_POLICY_KEYS:
            raise ConfigError(
                f"{source}: `mrff client` has no use for it (the client's keys: {sorted(CONFIG_POLICY_KEYS)})"
            )
        elif value is None:
            continue
        elif key == "dp":
            if value == "local":
                raise ConfigError(
                    f'{source}: dp = "local" is not run over the network; a client accepts "distributed" or, with '
                    '--accept-weaker-privacy, "off"'
                )
            fields["dp_modes"] = ["off", "distributed"] if value == "off" else ["distributed"]
        elif key == "secure_aggregation":
            fields["allow_plain"] = value == "off"
        else:
            fields[CONFIG_POLICY_KEYS[key]] = value
    return fields, server_only


def client_policy(args: argparse.Namespace) -> ClientPolicy:
    """The client's policy from its sources, the later winning: the safe defaults, the [privacy] table of --config
    (`config_policy`), the --policy file, the flags. Built permissively, then checked once with the acceptance the
    user actually gave (file or flag): a policy weaker than the safe defaults needs --accept-weaker-privacy."""
    from client.policy import ClientPolicy

    configured, server_only = config_policy(args.config) if args.config else ({}, [])
    if server_only:
        print(
            f"NOTE --config {args.config}: [privacy] {', '.join(server_only)} are the server's settings; this client "
            "checks every round's values against its own policy",
            file=sys.stderr,
            flush=True,
        )
    file_values = {**configured, **(ClientPolicy.read_file(args.policy) if args.policy else {})}
    accept = bool(args.accept_weaker_privacy or file_values.get("accept_weaker", False))
    policy = ClientPolicy.from_dict({**file_values, "accept_weaker": True}, source=str(args.policy or "policy"))
    policy = policy.with_overrides(
        min_participants=args.min_participants,
        corrupt_neighbours=args.corrupt_neighbours,
        min_survivors=args.min_survivors,
        min_noise_multiplier=args.min_noise_multiplier,
        max_clip=args.max_clip,
        allow_plain=True if args.allow_plain else None,
        join_evaluation=False if args.no_evaluation else None,
        min_group_size=args.policy_min_group_size,
        dp_modes=("off", "distributed") if args.allow_dp_off else ("distributed",) if args.require_dp else None,
        max_epsilon=args.max_epsilon,
        max_aborted_sessions=args.max_aborted_sessions,
        min_honest_shares=args.min_honest_shares,
    )
    try:
        policy = ClientPolicy.from_dict({**policy.to_dict(), "accept_weaker": accept})
    except ConfigError as exc:
        if not configured:
            raise
        named = ", ".join(f"{k}={v}" for k, v in configured.items())
        raise ConfigError(f"{exc} (the [privacy] table of --config {args.config} sets {named})") from exc
    return policy


def client_main(args: argparse.Namespace) -> int:
    import grpc

    from client.process import Connection, parse_pause, parse_users, run_process
    from mrff_secure.pki import CertPaths, load_authority_public_key, load_revocations, read_file
    from mrff_secure.wire import signing

    options.resolve(args, "client")
    options.check_port(args.address)
    policy = client_policy(args)  # before the credentials, the data and the network: a bad policy ends at once
    users = parse_users(args.users)
    certs = CertPaths(args.certs)
    credentials = None
    if not args.insecure:  # mutual TLS by default: we present CERTS/client.crt (--insecure-no-mtls: none)
        ca = read_file(args.ca or certs.ca_crt, "CA certificate")
        if args.mtls:
            credentials = grpc.ssl_channel_credentials(
                ca, read_file(certs.client_key, "client key"), read_file(certs.client_crt, "client certificate")
            )
        else:
            credentials = grpc.ssl_channel_credentials(ca)
    connection = Connection(
        target=args.address,
        credentials=credentials,
        signing_key=signing.load_public_key(args.signing_pub or certs.signing_pub),
        authority_public_key=load_authority_public_key(args.identity_ca or certs.identity_ca_pub),
        retry_timeout=args.retry_timeout,
        server_name=args.server_name,
        client_certificate=bool(args.mtls) and not args.insecure,
    )
    revoked = load_revocations(args.revoked, certs.folder, connection.authority_public_key)
    check_credentials(users, args.state_dir, connection.authority_public_key, revoked)  # before data and network
    seed = args.client_seed if args.client_seed is not None else int.from_bytes(os.urandom(8), "big") >> 1
    data = options.load_dataset(args)
    pause = parse_pause(args.pause_after) if args.pause_after else None
    if not policy.join_evaluation:
        print("NOTE this client's policy: no held-out scores for the federated evaluation", file=sys.stderr, flush=True)
    if args.insecure_reproducible_noise:
        print(
            "WARNING --insecure-reproducible-noise: this client's DP noise is derived from --client-seed; "
            "its uploads are NOT PRIVATE",
            file=sys.stderr,
            flush=True,
        )
    return run_process(
        users,
        connection,
        args.state_dir,
        data,
        client_seed=seed,
        pause=pause,
        policy=policy,
        reproducible_noise=args.insecure_reproducible_noise,
        emit=lambda line: print(line, flush=True),
    )

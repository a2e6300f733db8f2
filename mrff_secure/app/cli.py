"""`mrff ...`: the command line. Thin: parse, resolve the configuration, call the library, print.

Building the parser imports nothing heavy (every option comes from `mrff_secure.app.options`, the
network commands' parsers from `server_command` and `client_command`, which import nothing heavy at
the top; each command's handler is named "module:function" and imported when it runs), so `mrff --help`
answers at once. Exit codes, for every command: 0 done (for `mrff audit`: every claim holds), 1 a runtime
failure (one line naming it), 2 a user mistake (one line naming the flag), 3 `mrff audit`: a claim
fails or the audit is inconclusive, 130 interrupted (Ctrl-C; the run folder stays consistent), 141 the
reader of stdout closed the pipe (`mrff privacy ... | head`: silent, as any Unix tool).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from mrff_secure import __version__
from mrff_secure.app import client_command, server_command
from mrff_secure.app.options import add_options
from mrff_secure.errors import ConfigError, MrffError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a Unix tool whose reader closed the pipe
Command = Callable[[argparse.Namespace], int]  # a command's handler: the parsed arguments -> exit code


class _Parser(argparse.ArgumentParser):
    """argparse, with every default in the help (the options' help lines say them already)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)


def _run_folder_arguments(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument(
        "--run-dir",
        type=Path,
        default=Path(default) if default else None,
        required=default is None,
        help=f"the run folder{f' (default: {default})' if default else ''}",
    )


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train in the vectorized simulation and write a run folder",
        description="Train MRFF in the vectorized simulation. The run folder gets config.toml (the "
        "resolved configuration), metrics.jsonl, summary.json, checkpoints, and "
        "operator-only/ (evaluations outside the privacy guarantee).",
    )
    _run_folder_arguments(p, "runs/latest")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --run-dir (default: refuse)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its last checkpoint, with its own configuration",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON to stdout")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    add_options(p, "train")
    p.set_defaults(handler="mrff_secure.app.train_command:train_main")


def _add_privacy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "privacy",
        help="epsilon for a noise multiplier, or the noise for a target epsilon",
        description="The accounting of `mrff train`, `mrff server` and `mrff audit`, for one "
        "configuration: give --noise-multiplier or --target-epsilon.",
    )
    p.add_argument(
        "--clients", type=int, required=True, metavar="N", help="number of users; sets the default delta 1/N^1.1"
    )
    p.add_argument(
        "--dim",
        type=int,
        default=None,
        metavar="D",
        help="--dp distributed (required): length of the clipped delta part (a run's summary.json states it "
        "as privacy.release.delta_size)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    add_options(p, "privacy")
    p.set_defaults(handler="mrff_secure.app.privacy_command:privacy_main")


def _add_audit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit",
        help="the privacy audit: every threat model and noise level, attacks, rules, report",
        description="Train under each threat model and noise level, attack what the server saw, "
        "evaluate the rules R0-R5 and write the report. Exit 0: every claim holds; 3: a "
        "claim fails or the audit is inconclusive. Resumable: run it again on the same "
        "--run-dir.",
    )
    _run_folder_arguments(p, None)
    p.add_argument("--processes", type=int, default=1, help="cells run in this many parallel processes (default: 1)")
    p.add_argument("--signing-key", type=Path, default=None, help="Ed25519 key (PEM) that signs report.json's SHA-256")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    add_options(p, "audit")
    p.set_defaults(handler="mrff_secure.app.audit_command:audit_main")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="the privacy report (JSON, Markdown, HTML) of audit, training or network runs")
    p.add_argument(
        "folders", nargs="+", type=Path, help="audit, training (mrff train) or network (mrff server) folders"
    )
    p.add_argument("--signing-key", type=Path, default=None, help="Ed25519 key (PEM) that signs report.json's SHA-256")
    p.add_argument(
        "--signing-pub",
        type=Path,
        default=None,
        help="network runs: the server's signing public key, to check the audit log's signatures",
    )
    p.add_argument(
        "--audit",
        type=Path,
        default=None,
        help="network and training runs: the audit folder whose cell of the same privacy configuration the report "
        "cites (matched by a digest of mechanism, clip, z, k, t, rounds); without it the report says 'not audited'",
    )
    p.set_defaults(handler="mrff_secure.app.report_command:report_main")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mrff",
        description="MRFF federated recommendation with secure aggregation and DP. "
        "Every command takes --config TOML and --set TABLE.KEY=VALUE.",
        epilog="exit codes: 0 done, 1 runtime failure, 2 usage error, 3 (audit) a claim fails or the "
        "audit is inconclusive, 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"mrff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train(sub)
    _add_privacy(sub)
    _add_audit(sub)
    _add_report(sub)
    server_command.register(sub)
    client_command.register(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    # force=True: opacus' import installs a root handler, after which basicConfig would do nothing
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        force=True,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )


def _handler(name: str | Command) -> Command:
    """A command's function: itself, or "module:function" imported now (each command imports what it needs)."""
    if callable(name):
        return name
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the command line is read: still one line and 130
        print("mrff: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    verbose = bool(getattr(args, "verbose", False))
    if not verbose:
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # raw gRPC core lines only with -v (read at grpc import)
    _configure_logging(verbose)
    prefix = f"mrff {args.command}: error:"
    try:
        return _handler(args.handler)(args)
    except ConfigError as exc:
        print(f"{prefix} {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except MrffError as exc:
        print(f"{prefix} {exc}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"mrff {args.command}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # whoever read stdout has gone (`mrff privacy ... | head`): nothing to say to it
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"{prefix} {exc.strerror or exc}{where}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    except Exception as exc:  # a defect of ours: one line, the traceback with -v
        if verbose:
            raise
        print(
            f"{prefix} internal error {type(exc).__name__}: {exc} (run with -v for the traceback; please report it)",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_FAILURE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def entry() -> None:
    """The `mrff` program: `main`, then the interpreter's exit with Ctrl-C ignored. Python restores the
    default SIGINT action while it finalizes (torch's teardown takes a moment), so an interrupt that
    arrives once the command has returned would otherwise kill the process (-2) instead of letting it
    end with the command's own exit code."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    entry()

"""`mrff report`: write the privacy report (JSON, Markdown, HTML) of audit, training or network run folders."""

from __future__ import annotations

import argparse

from mrff_secure.errors import MrffError
from mrff_secure.report.write import write_report


def report_main(args: argparse.Namespace) -> int:
    code = 0
    for folder in args.folders:
        if not (folder / "audit.jsonl").is_file() and (folder / "server" / "audit.jsonl").is_file():
            print(f"mrff report: {folder} is a run-local folder: the report is of its server run, {folder / 'server'}")
            folder = folder / "server"
        try:
            paths = write_report(
                folder, signing_key=args.signing_key, audit_public_key=args.signing_pub, audit_dir=args.audit
            )
        except (MrffError, OSError, ValueError) as exc:
            print(f"mrff report: {folder}: {exc}")
            code = 1
            continue
        print(f"wrote {paths['html']}, {paths['md']}, {paths['json']}")
    return code

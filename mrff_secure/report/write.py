"""`mrff report FOLDER...` and `write_report`: report.json, the plots, report.md and report.html, written
atomically into the folder; with a signing key, report.json.sig (Ed25519 over the domain-separated
SHA-256 of report.json's bytes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mrff_secure.atomic import write_bytes_atomic
from mrff_secure.report.build import build_report
from mrff_secure.report.render import render_html, render_markdown

SIGNATURE_DOMAIN = b"mrff-secure/v1/report-sha256\x00"


def write_report(
    folder: Path,
    *,
    signing_key: Path | None = None,
    audit_public_key: Path | None = None,
    audit_dir: Path | None = None,
) -> dict[str, Path]:
    """Write the report of `folder` (see build_report); `audit_dir`: the audit whose cell of the same privacy
    configuration a network or training run's report cites."""
    folder = Path(folder)
    trusted = None
    if audit_public_key is not None:
        from mrff_secure.wire.signing import load_public_key

        trusted = load_public_key(audit_public_key, "server's signing public key")
    report = build_report(folder, audit_public_key=trusted, audit_dir=audit_dir)
    if report["kind"] == "audit":
        from mrff_secure.report.plots import write_plots

        grid = json.loads((folder / "grid.json").read_text())
        report["plots"] = [p.name for p in write_plots(grid, folder)]
    else:
        report["plots"] = report.pop("run_plots", [])
    data = (json.dumps(report, indent=1, sort_keys=False, allow_nan=False) + "\n").encode()
    write_bytes_atomic(folder / "report.json", data)
    digest = hashlib.sha256(data).hexdigest()
    signature = None
    if signing_key is not None:
        from mrff_secure.wire.signing import load_private_key

        key = load_private_key(signing_key, "report signing key")
        signature = key.sign(SIGNATURE_DOMAIN + bytes.fromhex(digest)).hex()
        write_bytes_atomic(folder / "report.json.sig", (signature + "\n").encode())
    write_bytes_atomic(folder / "report.md", render_markdown(report, digest=digest, signature=signature).encode())
    write_bytes_atomic(folder / "report.html", render_html(report, folder, digest=digest, signature=signature).encode())
    return {"json": folder / "report.json", "md": folder / "report.md", "html": folder / "report.html"}


def verify_report_signature(folder: Path, public_key_path: Path) -> bool:
    """True when report.json.sig is the key's signature of report.json as it is now."""
    from cryptography.exceptions import InvalidSignature

    from mrff_secure.wire.signing import load_public_key

    folder = Path(folder)
    digest = hashlib.sha256((folder / "report.json").read_bytes()).digest()
    signature = bytes.fromhex((folder / "report.json.sig").read_text().strip())
    try:
        load_public_key(public_key_path, "report verification key").verify(signature, SIGNATURE_DOMAIN + digest)
    except InvalidSignature:
        return False
    return True

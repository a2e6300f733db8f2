"""Where a result came from: the git commit of the checkout that produced it.

A core module so that every layer can stamp its outputs (the audit grid in `attacks.grid`, the report
in `mrff_secure.report`) without importing the other.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def source_commit() -> str:
    """The git commit of this checkout ("unknown" outside a git checkout)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

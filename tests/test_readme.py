"""The README's examples run as written on a fresh clone.

Markers (an HTML comment on the line right before a ```bash fence; invisible when rendered):

    <!-- runnable -->   the block runs as written, in seconds, on synthetic data: this test runs it
    <!-- template -->   the block holds placeholders (DATA, SERVER_HOST, ...) or a synopsis: never run

Every runnable block runs in a fresh temporary folder, as `bash` with `set -euo pipefail`, with the
repository's code first on PYTHONPATH (so `mrff` is this checkout's), and must exit 0. The folder holds
nothing of the clone: a runnable block may need only what it makes itself (a fresh clone's parent has no
`../shared`). Every other bash block (long commands: the audit, the test suite, Ray) is not run, but each
of its `mrff ...` lines must parse with the real command-line parser, so a renamed flag or command
fails here too. A `--dim D` in a runnable block must be the delta length (`privacy.release.delta_size`)
of the runs the block trains. No README link or path may point into `../shared/`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mrff_secure.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNNABLE = "<!-- runnable -->"
TEMPLATE = "<!-- template -->"
HANG_SECONDS = 300  # a runnable block still running after this has hung (each takes seconds to ~30 s on two cores)


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README: its language, its marker (or ""), its text, its first line."""

    language: str
    marker: str
    text: str
    line: int

    @property
    def name(self) -> str:
        first = next((s for s in self.text.splitlines() if s.strip() and not s.lstrip().startswith("#")), "")
        return f"README.md:{self.line}: {first[:60]}"


def readme_blocks(text: str) -> list[Block]:
    """Every fenced block of `text` (```lang ... ```), with the marker on the line before its fence."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = re.fullmatch(r"```(\w*)\s*", lines[i])
        if fence is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        if end is None:
            raise AssertionError(f"README.md:{i + 1}: a code fence is never closed")
        previous = lines[i - 1].strip() if i > 0 else ""
        marker = previous if previous in (RUNNABLE, TEMPLATE) else ""
        blocks.append(Block(fence.group(1), marker, "\n".join(lines[i + 1 : end]) + "\n", i + 2))
        i = end + 1
    return blocks


BLOCKS = readme_blocks(README.read_text())
RUNNABLE_BLOCKS = [b for b in BLOCKS if b.marker == RUNNABLE]
UNMARKED_BASH = [b for b in BLOCKS if b.language == "bash" and not b.marker]


def commands(block: Block) -> list[str]:
    """The block's shell commands: continuation lines joined, comments and blank lines left out."""
    joined = re.sub(r"\\\n\s*", " ", block.text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def mrff_invocations(command: str) -> list[list[str]]:
    """The arguments after `mrff` of each `mrff` in one command line (split at `&&`, `||`, `|`, `;`;
    a trailing comment cut)."""
    words = shlex.split(command, comments=True)
    segments: list[list[str]] = [[]]
    for word in words:
        if word in ("&&", "||", "|", ";"):
            segments.append([])
        else:
            segments[-1].append(word)
    return [segment[1:] for segment in segments if segment and segment[0] == "mrff"]


def test_the_markers_mark_bash_blocks() -> None:
    for block in BLOCKS:
        if block.marker:
            assert block.language == "bash", f"{block.name}: {block.marker} marks a ```{block.language} block"
    marked = [command for block in RUNNABLE_BLOCKS for command in commands(block)]
    examples = (
        ("mrff train", "--dp local"),
        ("mrff train", "--dp distributed"),
        ("mrff train", "--config"),
        ("mrff privacy", "--dp local"),
        ("mrff privacy", "--dp distributed"),
        ("mrff certs", "authority"),
        ("mrff certs", "issue-client"),
        ("mrff certs", "revoke"),
        ("mrff client-key", "--users"),
    )
    for command, option in examples:
        assert any(c.startswith(command) and option in c for c in marked), (
            f"no runnable README block runs `{command} ... {option}`"
        )


def test_no_readme_link_or_path_points_into_shared() -> None:
    text = README.read_text()
    hits = [f"README.md:{n}" for n, line in enumerate(text.splitlines(), 1) if "../shared" in line]
    assert not hits, f"a clone has no ../shared: {', '.join(hits)}"


def test_relative_readme_links_exist() -> None:
    text = README.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target:
            continue
        assert (ROOT / target).exists(), f"README links to {target}, which a clone does not have"


@pytest.mark.parametrize("block", UNMARKED_BASH, ids=lambda b: b.name)
def test_unmarked_mrff_commands_parse(block: Block) -> None:
    """Blocks too long to run (the audit, the test suite, Ray): each `mrff` line still parses."""
    parser = build_parser()
    invocations = [arguments for command in commands(block) for arguments in mrff_invocations(command)]
    assert invocations, f"{block.name}: no `mrff` command to check"
    for arguments in invocations:
        try:
            parser.parse_args(arguments)
        except SystemExit as exc:
            raise AssertionError(f"{block.name}: `mrff {' '.join(arguments)}` does not parse") from exc


@pytest.mark.parametrize("block", RUNNABLE_BLOCKS, ids=lambda b: b.name)
def test_runnable_block_runs(block: Block, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    script = "set -euo pipefail\n" + block.text
    try:
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_SECONDS
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{block.name}: still running after {HANG_SECONDS} s") from exc
    assert done.returncode == 0, f"{block.name}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    # a `--dim D` the block gives `mrff privacy` is the delta length its own training runs report
    dims = {int(d) for d in re.findall(r"--dim (\d+)", block.text)}
    for summary in tmp_path.glob("runs/*/summary.json"):
        delta_size = json.loads(summary.read_text())["privacy"]["release"]["delta_size"]
        assert not dims or dims == {delta_size}, f"{block.name}: --dim {dims}, but {summary} says {delta_size}"

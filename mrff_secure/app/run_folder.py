"""A run folder that a command creates, and removes again if the command fails before its run starts.

A command that stops at a usage error, a missing file or a port in use must leave no half-made run
behind: the next try of the same command would otherwise be refused ("already holds a run"). Only what
this command created is removed: a folder that did not exist (and the missing parent folders it made),
or, in a folder that existed, the entries that were not there before. Once the run has started (the
server listens, the first round began), a failure leaves everything in place for `--resume`.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType


class NewRunFolder:
    """`with NewRunFolder(path) as folder: ...; folder.started()`: discarded on any exception
    (Ctrl-C included) raised before `started()`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._created_top: Path | None = None  # the outermost folder this command will have created
        probe = self.path.absolute()
        while not probe.exists():
            self._created_top = probe
            probe = probe.parent
        self._entries_before: set[str] = set(os.listdir(self.path)) if self.path.is_dir() else set()
        self._started = False

    def started(self) -> None:
        """The run exists from here on: a later failure keeps its folder."""
        self._started = True

    def discard(self) -> None:
        """Remove what this command created (nothing else)."""
        if self._created_top is not None:
            shutil.rmtree(self._created_top, ignore_errors=True)
            return
        if not self.path.is_dir():
            return
        for name in set(os.listdir(self.path)) - self._entries_before:
            entry = self.path / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def __enter__(self) -> NewRunFolder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and not self._started:
            self.discard()

"""User-facing errors. The library raises these; only the CLI catches them and exits non-zero."""

from __future__ import annotations

from pathlib import Path


class DeflareError(Exception):
    """A failure the user can act on: the message names the file or field and what was expected."""


class InputError(DeflareError):
    """An input file is missing, unreadable, of an unknown layout, or holds invalid data."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class OutputError(DeflareError):
    """An output cannot be written where it was asked for."""


class SettingsError(DeflareError):
    """A settings file or flag holds a value deflare cannot use."""

"""Errors the user can act on. Each names the file (when there is one) and the problem."""

from __future__ import annotations

from os import PathLike


class LPDError(Exception):
    """Base class of errors meant for the user, shown without a traceback by the CLI."""


class InputError(LPDError, ValueError):
    """A file or argument given by the user cannot be used."""

    def __init__(self, path: str | PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class CheckpointError(InputError):
    """A checkpoint is unreadable, unsafe or made for another model."""


class StoreMismatch(InputError):
    """An existing prediction store holds a result made with other settings (another model,
    region, magnification...): resume=False replaces it. ``differences`` names the keys."""

    def __init__(self, path, differences) -> None:
        self.differences = tuple(differences)
        super().__init__(path, "holds a prediction made with other settings (differs in: "
                         f"{', '.join(self.differences)}); pass resume=False to replace it")


class Cancelled(LPDError):
    """Raised inside long work when the caller asked it to stop."""

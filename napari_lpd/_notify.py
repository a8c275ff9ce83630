"""One-line napari notifications for errors of lpd jobs (the reason first, no traceback
dialog)."""

from __future__ import annotations

import logging

from napari.utils.notifications import show_error

from lpd.errors import LPDError

log = logging.getLogger(__name__)


def error_message(exc: BaseException) -> str:
    """One line for a notification, the reason first: ``"<problem> — <file> (<folder>)"``
    for an error naming a file (notifications cut long lines: a path first would hide the
    reason). Anything but an ``LPDError`` is prefixed with its type.

    Parameters
    ----------
    exc : BaseException
        The error.

    Returns
    -------
    str
        The message.
    """
    from napari_lpd._reader import reason_first  # here: the reader loads dask (~0.7 s)

    text = reason_first(exc)
    return text if isinstance(exc, LPDError) else f"{type(exc).__name__}: {text}"


def notify_error(exc: BaseException, what: str = "LPD") -> None:
    """A napari notification ``"<what> failed: <error_message>"`` without the traceback
    dialog (the log keeps the traceback of anything but an ``LPDError``).

    Parameters
    ----------
    exc : BaseException
        The error.
    what : str
        What failed, e.g. ``"Segmentation"``.
    """
    if not isinstance(exc, LPDError):
        log.error("%s failed", what, exc_info=exc)
    show_error(f"{what} failed: {error_message(exc)}")

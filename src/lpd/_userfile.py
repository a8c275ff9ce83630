"""Reading text and JSON files that users may have opened in an editor.

A file re-saved by a Windows editor may begin with a byte-order mark (UTF-8, or UTF-16 /
UTF-32 for Notepad's "Unicode") and end its lines with CRLF: both are read as the same text.
Whatever cannot be read raises ``InputError`` naming the file; never another exception.
Files are always written back as UTF-8 without a BOM."""

from __future__ import annotations

import codecs
import json
import os
from typing import Any

from lpd.errors import InputError

# longest first: the UTF-32-LE mark begins with the UTF-16-LE one
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16"))


def decode_text(raw: bytes) -> str:
    """Text of a file's bytes: UTF-8, or the encoding its byte-order mark names (the mark
    dropped); line endings (CRLF, CR) become ``\\n``.

    Parameters
    ----------
    raw : bytes
        The file's content.

    Returns
    -------
    str
        The decoded text.

    Raises
    ------
    UnicodeDecodeError
        If the bytes are not text in that encoding.
    """
    encoding = next((enc for bom, enc in _BOMS if raw.startswith(bom)), "utf-8")
    text = raw.decode(encoding)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: str | os.PathLike[str], what: str = "file") -> str:
    """A user's text file, read tolerantly (see ``decode_text``).

    Parameters
    ----------
    path : str or PathLike
        The file.
    what : str
        What the file is, for the error message (e.g. ``"tag file"``).

    Returns
    -------
    str
        Its text.

    Raises
    ------
    InputError
        Naming the file, when it cannot be read or is not UTF-8 / UTF-16 / UTF-32 text.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise InputError(path, f"cannot read the {what} ({exc.strerror or exc})") from None
    try:
        return decode_text(raw)
    except UnicodeDecodeError as exc:
        raise InputError(path, f"the {what} is not UTF-8 text (byte {exc.start}: "
                         f"{exc.reason}); save it as UTF-8") from None


def loads(text: str | bytes, path: str | os.PathLike[str] | None, what: str = "file") -> Any:
    """Parse JSON text tolerantly: a leading byte-order mark is ignored.

    Parameters
    ----------
    text : str or bytes
        The JSON document (bytes are decoded as ``decode_text`` does).
    path : str or PathLike or None
        The file it came from, named in errors.
    what : str
        What the document is, for the error message.

    Returns
    -------
    Any
        The parsed value.

    Raises
    ------
    InputError
        Naming ``path`` when the text is not JSON (or is nested too deeply to read).
    """
    try:
        if isinstance(text, bytes):
            text = decode_text(text)
        return json.loads(text.removeprefix("\ufeff"))
    except UnicodeDecodeError as exc:
        raise InputError(path, f"the {what} is not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, f"the {what} is not readable JSON ({exc})") from None
    except RecursionError:
        raise InputError(path, f"the {what} is JSON nested too deeply to read") from None


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """A user's JSON file, read tolerantly (BOM, UTF-16/32, CRLF).

    Parameters
    ----------
    path : str or PathLike
        The file.
    what : str
        What the file is, for the error message (e.g. ``"tag file"``).

    Returns
    -------
    Any
        The parsed JSON value.

    Raises
    ------
    InputError
        Naming the file, when it cannot be read, decoded or parsed.
    """
    return loads(read_text(path, what), path, what)

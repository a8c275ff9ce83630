"""Plain files, for code outside ``lpd`` (the plugin): atomic writes (``lpd._atomic``: a
temp file beside the target, then a rename, so a crash leaves the old file or the new one)
and reading the text and JSON files users edit (``lpd._userfile``: byte-order marks and
CRLF read alike; anything unreadable is an ``InputError`` naming the file)."""

from __future__ import annotations

from lpd._atomic import atomic_open, atomic_path, atomic_write_bytes, atomic_write_text
from lpd._userfile import read_json, read_text

__all__ = ["atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "read_json", "read_text"]

"""The ``napari-lpd`` console script: commands that open the napari viewer.

Headless work (training, prediction, the demo written to files) is the ``lpd`` command's.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lpd import __version__


def has_display() -> bool:
    """Whether a GUI can open: on Linux that needs an X11 or Wayland display."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-lpd", description="Open napari with LPD tissue segmentation."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="open napari with the sample slide and the demo's layers")
    demo.add_argument("--device", default=None, help="torch device (cuda, mps, cpu); default: best")
    return parser


def _demo(device: str | None) -> int:
    if not has_display():
        print(
            "napari-lpd demo: no display found ($DISPLAY and $WAYLAND_DISPLAY are unset).\n"
            "Run the headless demo instead, which writes its results as files:\n"
            "    lpd demo --out DIR",
            file=sys.stderr,
        )
        return 2
    # Imported here so that `napari-lpd --help` and the no-display path stay fast.
    import napari

    from napari_lpd._demo import show_demo

    viewer = napari.Viewer(title="napari-lpd demo")
    show_demo(viewer, device=device)
    try:
        napari.run()
    except KeyboardInterrupt:  # Ctrl-C in the terminal: a message, not a traceback
        print("napari-lpd demo: interrupted", file=sys.stderr)
        return 130
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-lpd`` console script; returns the exit status."""
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args.device)
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse requires one


if __name__ == "__main__":
    raise SystemExit(main())

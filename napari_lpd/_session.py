"""One plugin session per napari viewer: what the dock widgets of a viewer share.

``Session.of(viewer)`` returns the same object for the same viewer (a new one for another
viewer; it goes with its viewer). Widgets talk through it, never to each other:

- ``checkpoint_changed(str)``: a checkpoint the viewer's widgets should use from now on
  (the Fine-tune widget emits it with the checkpoint it saved; the Segment widget selects
  it);
- ``result_ready(object)``: a finished LPD result Labels layer (the Segment widget and the
  Fine-tune widget's own re-segmentation emit it);
- ``segmenter()``: the viewer's segmenter - an object with ``segment_view(layer)`` that
  segments the visible part of an image layer and returns its ``RunHandle`` (or None when
  it cannot); the Segment widget registers itself with ``add_segmenter``."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Protocol

from qtpy.QtCore import QObject, Signal

if TYPE_CHECKING:
    import napari.viewer

    from napari_lpd._workers import RunHandle


class Segmenter(Protocol):
    """What the Fine-tune widget asks of a segmenter (the Segment widget)."""

    def segment_view(self, layer: Any) -> RunHandle | None: ...


class Session(QObject):
    """The shared state and signals of one viewer's LPD widgets (see the module docstring)."""

    checkpoint_changed = Signal(str)  # the path of the checkpoint to use from now on
    result_ready = Signal(object)  # a finished result Labels layer

    # one session per viewer, dropped with its viewer (a viewer hashes by identity)
    _sessions: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = weakref.ref(viewer)
        self._segmenters: list[weakref.ref] = []  # newest last

    @classmethod
    def of(cls, viewer: napari.viewer.Viewer) -> Session:
        """The session of ``viewer``, made at the first call.

        Parameters
        ----------
        viewer : napari.viewer.Viewer
            The viewer whose widgets share the session.

        Returns
        -------
        Session
            The same object for the same viewer, as long as the viewer lives.
        """
        session = cls._sessions.get(viewer)
        if session is None:
            session = cls._sessions[viewer] = cls(viewer)
        return session

    @property
    def viewer(self) -> Any:
        """The viewer (None once it is gone)."""
        return self._viewer()

    def add_segmenter(self, segmenter: Segmenter) -> None:
        """Register a segmenter; the newest live one answers ``segmenter()``. Kept weakly:
        a deleted widget drops out by itself.

        Parameters
        ----------
        segmenter : Segmenter
            Typically the Segment widget (a QWidget with ``segment_view``).
        """
        self._segmenters.append(weakref.ref(segmenter))

    def segmenter(self) -> Segmenter | None:
        """The newest registered segmenter that still exists, or None."""
        alive = [ref for ref in self._segmenters if _exists(ref())]
        self._segmenters = alive
        return alive[-1]() if alive else None


def _exists(obj: Any) -> bool:
    """False for None and for a Qt object whose C++ side was deleted (its wrapper stays)."""
    if obj is None:
        return False
    try:
        obj.objectName()  # any call fails once Qt deleted the widget
    except RuntimeError:
        return False
    except AttributeError:  # not a QObject: alive as long as referenced
        return True
    return True

"""Helpers shared by the core tests."""

from __future__ import annotations


class PassCounter:
    """Counts forward passes (images, not batches) of a model."""

    def __init__(self, model) -> None:
        self.model, self.n = model, 0
        self._forward = model.forward

    def __enter__(self) -> PassCounter:
        def counted(x):
            self.n += x.shape[0]
            return self._forward(x)

        self.model.forward = counted
        return self

    def __exit__(self, *exc) -> None:
        del self.model.forward

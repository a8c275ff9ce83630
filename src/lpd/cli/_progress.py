"""Terminal progress bars for the CLI (the core reports progress through callbacks)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(
    total: int, desc: str, unit: str = "it", disable: bool | None = None
) -> Iterator[tqdm]:
    """A tqdm bar on stderr; by default off when stderr is not a terminal."""
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True,
               mininterval=0.5, disable=None if not disable else True)
    try:
        yield bar
    finally:
        bar.close()


class StagedProgress:
    """One bar per stage of a multi-stage job: ``progress(stage, done, total)``."""

    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.labels = labels or {}
        self.stage: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = tqdm(total=total, desc=self.labels.get(stage, stage), file=sys.stderr,
                            dynamic_ncols=True, mininterval=0.5, disable=None)
        assert self.bar is not None
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> StagedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Progress bars with an ETA for long commands (``model import-gguf``, ``eval``, ``bench``), on stderr.

tqdm draws them. They show when stderr is a terminal; ``EDGED_PROGRESS=always`` forces them (logs to a
file, tests), ``EDGED_PROGRESS=never`` turns them off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

from tqdm import tqdm  # type: ignore[import-untyped]

ENV = "EDGED_PROGRESS"
T = TypeVar("T")


def wanted(stream: IO[str]) -> bool:
    """Whether to draw on ``stream``: ``$EDGED_PROGRESS`` (always, never, auto), auto = a terminal."""
    mode = os.environ.get(ENV, "auto").lower()
    if mode in ("always", "1", "yes"):
        return True
    if mode in ("never", "0", "no"):
        return False
    return stream.isatty()


def bar(*, total: int | None, desc: str, unit: str = "it", stream: IO[str] | None = None) -> tqdm[Any]:
    """A bar to ``update()`` by hand (threads finishing work in any order); ``close()`` it, or use ``with``."""
    out = stream or sys.stderr
    return tqdm(total=total, desc=desc, unit=unit, file=out, disable=not wanted(out), dynamic_ncols=True, leave=True)


def progress(
    items: Iterable[T], *, desc: str, unit: str = "it", total: int | None = None, stream: IO[str] | None = None
) -> Iterator[T]:
    """``items``, one by one, with a bar showing done/total, rate and the time left."""
    size = total if total is not None else (len(items) if hasattr(items, "__len__") else None)  # type: ignore[arg-type]
    with bar(total=size, desc=desc, unit=unit, stream=stream) as b:
        for item in items:
            yield item
            b.update(1)

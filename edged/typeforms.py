"""Types built at run time for pydantic's dynamic models: a registry's ids, the numbers shown to a model.

A static checker cannot follow a ``Literal`` or ``Union`` whose members are only known at run time, so
these return ``Any``: the one place where the answer schemas built from a registry leave the type system.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Union


def one_of(values: Iterable[object]) -> Any:
    """``Literal[v1, v2, ...]``: exactly one of ``values``."""
    return Literal[tuple(values)]


def any_of(types: Iterable[object]) -> Any:
    """``Union[t1, t2, ...]``: a value of one of ``types`` (a single type stays itself)."""
    return Union[tuple(types)]  # noqa: UP007 (a union built at run time)


def list_of(item: object) -> Any:
    """``list[item]`` for an item type built at run time."""
    return list[item]  # type: ignore[valid-type]

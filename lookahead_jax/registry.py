"""A name → record registry (as big_vision's ``pp/registry.py``): refuses duplicates,
lists the known names when a lookup fails.

One helper behind both the strategy registry (:mod:`lookahead_jax.strategies.registry`)
and the stopping criteria (:mod:`lookahead_jax.stopping`); the records themselves are
registered by explicit imports, nothing is discovered.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Records by name.

    Args:
      what: the kind of record, as errors name it (``"strategy"``).
      known: how the list of names is introduced in an unknown-name error
        (``"known strategies"``).
    """

    def __init__(self, what: str, known: str = "known"):
        self.what = what
        self.known = known
        self._records: dict[str, T] = {}

    def add(self, name: str, record: T) -> T:
        """Adds ``record`` under ``name``; a name already registered is refused."""
        if name in self._records:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._records[name] = record
        return record

    def get(self, name: str) -> T:
        """The record registered under ``name``; an unknown name lists the known ones."""
        try:
            return self._records[name]
        except KeyError:
            raise ValueError(f"unknown {self.what} {name!r}; {self.known}: "
                             f"{', '.join(sorted(self._records))}") from None

    def names(self) -> tuple[str, ...]:
        """Sorted names of every registered record."""
        return tuple(sorted(self._records))

"""Named registries: one registration style for every pluggable thing in cvlth.

Models (architectures), datasets, objectives, pruning strategies, run kinds, task models and the
functions that execute each run kind are all :class:`Registry` objects, so adding one is one
decorated function or one ``add`` in the file that defines it::

    STRATEGIES = Registry("pruning strategy")

    @STRATEGIES.register("magnitude")
    def global_magnitude(...): ...

A registry is a read-only mapping (``name in R``, ``R[name]``, ``sorted(R)``, ``R.items()``);
:meth:`Registry.lookup` is the lookup for user-given names: an unknown name raises the registry's
user error with the list of valid names. A leaf module: it imports nothing of cvlth but errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from cvlth.errors import CvlthError

T = TypeVar("T")
I = TypeVar("I")  # noqa: E741  (the item a decorator registers and returns unchanged)


class Registry(Mapping[str, T], Generic[T]):
    """Items of one kind by name, in registration order."""

    def __init__(self, what: str, error: type[CvlthError] = CvlthError, list_hint: str = "") -> None:
        self.what = what  # e.g. "dataset": used in the unknown-name message
        self.error = error
        self.list_hint = list_hint  # e.g. " (`cvlth datasets` lists them)"
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name``; a name registered twice is a programming error."""
        if name in self._items:
            raise ValueError(f"{self.what} {name!r} is registered twice")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[I], I]:
        """Decorator form of :meth:`add` (for functions and classes)."""

        def decorate(item: I) -> I:
            self.add(name, item)  # type: ignore[arg-type]
            return item

        return decorate

    def lookup(self, name: str) -> T:
        """The item called ``name``; an unknown name is the user's error, with the valid names."""
        if name not in self._items:
            raise self.error(f"unknown {self.what} {name!r}", hint=f"choose one of: {self.choices()}")
        return self._items[name]

    def choices(self) -> str:
        return ", ".join(self._items) + self.list_hint

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._items)})"

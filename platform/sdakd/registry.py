"""A small explicit registry: refuses duplicates, lists itself, and names the valid choices on a miss."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from sdakd.errors import SdakdError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, name_attr: str | None = None) -> None:
        self.kind = kind
        self.name_attr = name_attr  # set on each entry to its registered name, so the name is written once
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise SdakdError(f"{self.kind} {name!r} is registered twice")
            if self.name_attr is not None:
                setattr(obj, self.name_attr, name)
            self._entries[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise SdakdError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

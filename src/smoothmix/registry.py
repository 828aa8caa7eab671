"""One shape for every "things by name" table: architectures, training methods, datasets.

A :class:`Registry` maps names to objects of one kind. The built-ins are registered through
the same :meth:`Registry.register` as users' own entries, and a name that is not there is
one :class:`~smoothmix.errors.SmoothmixError` naming the nearest known name and all of them.
A new kind (e.g. denoisers) is one more ``Registry("denoiser")``, not a new shape::

    DENOISERS: Registry[Callable[..., nn.Module]] = Registry("denoiser")

    @DENOISERS.register("dncnn", description="DnCNN of Salman et al. (2020)")
    def dncnn(channels: int) -> nn.Module: ...

This module imports nothing heavy, so the CLI and ``import smoothmix`` can use it freely.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

from smoothmix.errors import SmoothmixError

__all__ = ["Registry"]

T = TypeVar("T")
_O = TypeVar("_O")


class Registry(Generic[T]):
    """Named objects of one ``kind`` (a singular noun used in messages: "architecture").

    ``hint`` is appended to the message of an unknown name (how to add one). Entries keep
    their registration order, built-ins first; each may carry free-form ``metadata``.
    """

    def __init__(self, kind: str, *, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}
        self._metadata: dict[str, dict[str, Any]] = {}

    @overload
    def register(self, name: str, obj: None = None, *, overwrite: bool = False,
                 **metadata: Any) -> Callable[[_O], _O]: ...

    @overload
    def register(self, name: str, obj: _O, *, overwrite: bool = False,
                 **metadata: Any) -> _O: ...

    def register(self, name: str, obj: Any = None, *, overwrite: bool = False,
                 **metadata: Any) -> Any:
        """Add ``obj`` under ``name`` and return it unchanged; without ``obj``, a decorator
        that does so. A name already registered is an error unless ``overwrite=True``."""
        self.check_new(name, overwrite=overwrite)

        def add(value: Any) -> Any:
            self._entries[name] = value
            self._metadata[name] = dict(metadata)
            return value

        return add if obj is None else add(obj)

    def check_new(self, name: object, *, overwrite: bool = False) -> None:
        """Raise the one-line error :meth:`register` would for ``name``: not a non-empty
        string, or already registered without ``overwrite``. For registering functions
        that check more before they register."""
        if not isinstance(name, str) or not name.strip():
            raise SmoothmixError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and not overwrite:
            raise SmoothmixError(f"{self.kind} {name!r} is already registered; choose another "
                                 "name or pass overwrite=True to replace it")

    def get(self, name: object) -> T:
        """The entry ``name``; an unknown name raises a one-line :class:`SmoothmixError`
        with the nearest known name ("did you mean") and every known one."""
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        raise SmoothmixError(self.unknown_message(name))

    def unknown_message(self, name: object) -> str:
        """The one-line message for a name that is not registered."""
        near = difflib.get_close_matches(name, self._entries, n=1) if isinstance(name, str) else []
        guess = f" (did you mean {near[0]!r}?)" if near else ""
        hint = f" ({self.hint})" if self.hint else ""
        return (f"unknown {self.kind} {name!r}{guess}; valid {self.kind}s: "
                f"{', '.join(self._entries) or '(none)'}{hint}")

    def metadata(self, name: str) -> dict[str, Any]:
        """The keyword arguments ``name`` was registered with (a copy)."""
        self.get(name)
        return dict(self._metadata[name])

    def names(self) -> list[str]:
        """Every registered name, in registration order (built-ins first)."""
        return list(self._entries)

    def view(self) -> Mapping[str, T]:
        """A live read-only ``name -> entry`` mapping (for ``dict``-style readers)."""
        return MappingProxyType(self._entries)

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries (e.g. for tests that register)."""
        other: Registry[T] = Registry(self.kind, hint=self.hint)
        other._entries = dict(self._entries)
        other._metadata = {k: dict(v) for k, v in self._metadata.items()}
        return other

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

"""One generic registry for methods, attacks, datasets, models and strategies.

>>> from unbake.registry import Registry
>>> colours = Registry("colour")
>>> @colours.register("red")
... def make_red():
...     return "#f00"
>>> colours.create("red")
'#f00'
>>> colours.available()
['red']
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar, cast

from unbake.exceptions import InvalidParameterError, UnbakeError, UnknownNameError

T = TypeVar("T")

__all__ = ["ClassRegistry", "Registry"]


class Registry(Generic[T]):
    """A name → factory map whose error messages are built from its own contents.

    ``entry_points`` names an ``importlib.metadata`` entry-point group (for example
    ``"unbake.methods"``): other installed packages add items by declaring an entry point
    in that group whose module registers them on import, or that names the factory itself
    (``name = "package.module:function"``), registered under the entry point's name. The
    group is loaded once, on the first lookup. ``builtins`` names a module of unbake's own
    that registers more items on import, in a layer above the registry's (the families
    register their strategies and methods): it too is imported on the first lookup, so
    they are there whichever module was imported first.
    """

    def __init__(
        self, kind: str, *, entry_points: str | None = None, builtins: str | None = None
    ) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._group = entry_points
        self._builtins = builtins
        self._plugins_loaded = entry_points is None

    def _load_plugins(self) -> None:
        if self._builtins is not None:
            module, self._builtins = self._builtins, None
            importlib.import_module(module)
        if self._plugins_loaded or self._group is None:
            return
        self._plugins_loaded = True
        for ep in importlib.metadata.entry_points(group=self._group):
            try:
                item = ep.load()
            except Exception as exc:  # a broken plug-in must name itself
                raise UnbakeError(
                    f"The {self.kind} plug-in {ep.name!r} ({ep.value}, entry point group "
                    f"{self._group!r}) failed to load: {exc}; fix or uninstall that package."
                ) from exc
            # An entry point naming a factory (not a module that registers on import) adds
            # it under the entry point's name.
            known = ep.name in self._items or any(item is f for f in self._items.values())
            if getattr(ep, "attr", None) and callable(item) and not known:
                self._check(ep.name, item)
                self._items[ep.name] = item

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``factory`` under ``name``; a duplicate name raises."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise InvalidParameterError(
                    f"A {self.kind} named {name!r} is already registered; pick another name."
                )
            self._check(name, factory)
            self._items[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        self._load_plugins()
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.available()) or "(none)"
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}; choose one of: {known}."
            ) from None

    def create(self, name: str, /, **params: object) -> T:
        """Build the item registered as ``name`` with ``params``; an unknown name, an unknown
        parameter or a missing required one raises clearly."""
        factory = self.get(name)
        accepted = _keyword_names(factory)
        if accepted is not None:
            unknown = sorted(set(params) - accepted)
            if unknown:
                raise InvalidParameterError(
                    f"The {self.kind} {name!r} has no parameter {unknown[0]!r}; "
                    f"its parameters are: {', '.join(sorted(accepted)) or '(none)'}."
                )
        missing = sorted(_required_names(factory) - set(params))
        if missing:
            raise InvalidParameterError(
                f"The {self.kind} {name!r} needs the parameter {missing[0]!r}; give it."
            )
        return factory(**params)

    def create_checked(self, name: str, params: Mapping[str, object] | None = None) -> T:
        """:meth:`create` with ``params`` checked before any work is done: a mapping of
        parameter names, each declared by ``name``, each within its declared constraints
        (the item's ``validate()``).

        The one door for a name and parameters from anywhere: the command line, a REST
        request, a policy file, a queued row or a stored model of a workspace's catalog
        (a tampered one gets the same one-line error as the user's own input).
        """
        if params is None:
            params = {}
        if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
            raise InvalidParameterError(
                f"The parameters of {self.kind} {name!r} must be a mapping of names to "
                f"values; got {params!r:.80}."
            )
        item = self.create(name, **params)
        validate = getattr(item, "validate", None)
        if callable(validate):
            validate()
        return item

    def available(self) -> list[str]:
        self._load_plugins()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.available())

    def __len__(self) -> int:
        return len(self.available())

    def _check(self, name: str, factory: Callable[..., T]) -> None:
        """Refuse a factory this registry cannot hold (every callable suits this one)."""


class ClassRegistry(Registry[T]):
    """A :class:`Registry` whose items are subclasses of ``base``.

    :meth:`get` returns the class itself, so callers read its class attributes (a
    method's tags, a strategy's declared output) without building one; registering
    anything else (a function, say) raises.

    >>> class Shape:
    ...     sides = 0
    >>> shapes = ClassRegistry("shape", Shape)
    >>> @shapes.register("square")
    ... class Square(Shape):
    ...     sides = 4
    >>> shapes.get("square").sides
    4
    """

    def __init__(
        self,
        kind: str,
        base: type[T],
        *,
        entry_points: str | None = None,
        builtins: str | None = None,
    ) -> None:
        super().__init__(kind, entry_points=entry_points, builtins=builtins)
        self.base = base

    def _check(self, name: str, factory: Callable[..., T]) -> None:
        if not (isinstance(factory, type) and issubclass(factory, self.base)):
            raise InvalidParameterError(
                f"The {self.kind} {name!r} is {factory!r}, not a subclass of "
                f"{self.base.__name__}; register a class derived from it."
            )

    def get(self, name: str) -> type[T]:
        # Every item passed _check, so it is a subclass of base.
        return cast("type[T]", super().get(name))


def _required_names(factory: Callable[..., object]) -> set[str]:
    """The keyword names ``factory`` cannot do without (no default)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return set()
    kinds = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {
        p.name
        for p in sig.parameters.values()
        if p.kind in kinds and p.default is inspect.Parameter.empty and p.name != "self"
    }


def _keyword_names(factory: Callable[..., object]) -> set[str] | None:
    """The keyword names ``factory`` accepts, or ``None`` if it takes ``**kwargs``."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return None
    names = set()
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            names.add(p.name)
    return names - {"self"}

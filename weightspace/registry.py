"""Named choices: one entry type and one container for every registry of weightspace.

Wherever a user picks an implementation by name — in a config file, on the
command line or in a Python call — the names live in a :class:`Registry` of
:class:`Entry` s. An entry holds the implementation (a function or a class),
a one-line description, an optional reference (paper or URL), and reads its
parameters — names, defaults, keyword-only or not — from the implementation's
signature, so that configs, ``--help`` texts and error messages never list
them a second time. Adding a choice is one :meth:`Registry.register` call
where the implementation lives; the config and the CLI pick it up.

===================  ===============================================  =======================
registry             where                                            entry type
===================  ===============================================  =======================
merge methods        ``weightspace.merge.MERGE_METHODS``              ``MergeMethod``
alignment methods    ``weightspace.merge.ALIGN_METHODS``              ``Entry``
importance criteria  ``weightspace.prune.IMPORTANCE_METHODS``         ``ImportanceCriterion``
training tasks       ``weightspace.train.TASKS``                      ``Entry``
augmentations        ``weightspace.zoo.augmentations.AUGMENTATIONS``  ``Entry``
metanetworks         ``weightspace.nn.METANETWORKS``                  ``Metanetwork``
zoo import formats   ``weightspace.zoo.importers.IMPORT_FORMATS``     ``ImportFormat``
model families       ``weightspace.models.BUILTIN_MODELS``            ``ModelFamily``
edit ops             ``weightspace.train.EDIT_OPS``                   ``Entry``
===================  ===============================================  =======================

Example::

    from weightspace.registry import Entry, Registry

    SCHEDULES = Registry("schedule", parameter="schedule")
    SCHEDULES.register(Entry("cosine", cosine, "half-period cosine decay",
                             reference="Loshchilov & Hutter, ICLR 2017"))
    SCHEDULES.get("cosne")   # WeightspaceError: unknown schedule 'cosne';
                             # choose one of cosine

An entry's implementation may be given as ``"package.module:attribute"``; it
is imported on first use, for registries whose implementations live in a
package that must not be imported eagerly.

This module imports nothing from weightspace but :mod:`weightspace.errors`,
so every package can register its choices without an import cycle.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from weightspace.errors import WeightspaceError

__all__ = [
    "REQUIRED",
    "DuplicateEntryError",
    "Entry",
    "Parameter",
    "Registry",
    "UnknownNameError",
]


class _Required:
    """The default of a parameter that has none (compare with ``is``)."""

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self) -> str:
        return "REQUIRED"  # unpickles as this module's one instance


REQUIRED = _Required()
"""The :attr:`Parameter.default` of a parameter without a default."""


class UnknownNameError(WeightspaceError, KeyError):
    """A name that is not in a registry; the message lists the choices.

    It is also a :class:`KeyError`, so ``registry[name]`` behaves like a
    mapping lookup for code that catches that.
    """

    # KeyError would quote the whole message; show it as written
    __str__ = Exception.__str__


class DuplicateEntryError(WeightspaceError):
    """A second entry under a name a registry already holds."""


@dataclass(frozen=True)
class Parameter:
    """One parameter of an entry's implementation, read from its signature.

    Attributes:
        name: the keyword the implementation takes.
        default: its default value, or :data:`REQUIRED`.
        keyword_only: declared after ``*`` (it cannot be passed by position).
    """

    name: str
    default: Any = REQUIRED
    keyword_only: bool = False

    @property
    def required(self) -> bool:
        """Whether a caller must give a value."""
        return self.default is REQUIRED


@functools.cache
def _import_target(reference: str) -> Callable[..., Any]:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise WeightspaceError(f"implementation {reference!r} is not 'package.module:attribute'",
                               parameter="target")
    return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class Entry:
    """One named choice of a registry.

    Attributes:
        name: what users write (config value, command-line choice).
        target: the function or class, or ``"package.module:attribute"`` to
            import it on first use.
        description: one line for listings and ``--help``.
        reference: the paper or URL it implements (empty when none).
    """

    name: str
    target: Callable[..., Any] | str
    description: str
    reference: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise WeightspaceError(f"an entry needs a non-empty name, got {self.name!r}",
                                   parameter="name")

    def check_field(self, attribute: str, choices: Iterable[str]) -> None:
        """For subclasses' ``__post_init__``: raise unless field ``attribute``
        holds one of ``choices`` (a kind of entry, an input type …)."""
        value, choices = getattr(self, attribute), tuple(choices)
        if value not in choices:
            raise WeightspaceError(f"{type(self).__name__} {self.name!r}: {attribute} {value!r} "
                                   f"is not one of {', '.join(choices)}", parameter=attribute)

    def load(self) -> Callable[..., Any]:
        """The implementation (imported now if :attr:`target` is a string)."""
        return _import_target(self.target) if isinstance(self.target, str) else self.target

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the implementation: ``registry[name](...)`` runs the choice."""
        return self.load()(*args, **kwargs)

    def call_with_available(self, *args: Any, **available: Any) -> Any:
        """Call the implementation with ``args`` and those of the ``available``
        keyword arguments its signature names: a registry whose entries need
        different inputs (a criterion the data, another a seed) is called
        with everything the caller has, and each takes what it uses."""
        names = set(self.parameter_names())
        return self(*args, **{k: v for k, v in available.items() if k in names})

    def parameters(self) -> tuple[Parameter, ...]:
        """The named parameters of the implementation (a class: of its
        constructor), in signature order; ``*args`` / ``**kwargs`` are left out."""
        return _signature_parameters(self.load())

    def parameter(self, name: str) -> Parameter:
        """The parameter called ``name``.

        Raises:
            WeightspaceError: the implementation has no such parameter (the
                message lists the ones it has).
        """
        for p in self.parameters():
            if p.name == name:
                return p
        raise WeightspaceError(f"{self.name!r} has no parameter {name!r}; its parameters are "
                               f"{', '.join(self.parameter_names()) or 'none'}",
                               parameter=name)

    def parameter_names(self) -> tuple[str, ...]:
        """Names of :meth:`parameters`."""
        return tuple(p.name for p in self.parameters())

    def options(self) -> tuple[str, ...]:
        """Names of the keyword-only parameters (the options of a reader or
        method beyond its data arguments)."""
        return tuple(p.name for p in self.parameters() if p.keyword_only)


@functools.cache
def _signature_parameters(function: Callable[..., Any]) -> tuple[Parameter, ...]:
    skipped = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    out = []
    for p in inspect.signature(function).parameters.values():
        if p.kind in skipped:
            continue
        default = REQUIRED if p.default is inspect.Parameter.empty else p.default
        out.append(Parameter(p.name, default, p.kind is inspect.Parameter.KEYWORD_ONLY))
    return tuple(out)


E = TypeVar("E", bound=Entry)


class Registry(Generic[E]):
    """An ordered set of entries looked up by name.

    Iterating, ``in`` and ``len`` work on the names, as on a ``dict``;
    ``registry[name]`` is :meth:`get`.

    Args:
        kind: what one entry is, for messages (``"merge method"``).
        entries: the first entries, in order.
        parameter: the library argument that names an entry (``"method"``),
            set as :attr:`~weightspace.errors.WeightspaceError.parameter` of
            the unknown-name error.
        error: the class of the unknown-name error; a package's own error
            class (e.g. ``ZooError``) keeps that package's contract.
    """

    def __init__(self, kind: str, entries: Iterable[E] = (), *, parameter: str = "name",
                 error: type[WeightspaceError] = UnknownNameError) -> None:
        self.kind = kind
        self.parameter = parameter
        self.error = error
        self._entries: dict[str, E] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: E) -> E:
        """Add ``entry`` (returned, so that it can be kept in a name).

        Raises:
            DuplicateEntryError: the registry already holds its name.
        """
        if not isinstance(entry, Entry):
            raise WeightspaceError(f"a {self.kind} registry holds Entry objects, got "
                                   f"{type(entry).__name__}", parameter="entry")
        if entry.name in self._entries:
            raise DuplicateEntryError(f"{self.kind} {entry.name!r} is already registered; pick "
                                      f"another name or unregister the existing one first",
                                      parameter="entry")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> E:
        """Remove and return the entry called ``name`` (tests, plugins that
        replace a built-in)."""
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str, *, parameter: str | None = None) -> E:
        """The entry called ``name``.

        Args:
            parameter: the argument that held ``name``, when it is not the
                registry's own :attr:`parameter`.

        Raises:
            UnknownNameError (or the registry's ``error`` class): no such
                entry; the message names the registry and lists the choices.
        """
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            raise self.error(f"unknown {self.kind} {name!r}; choose one of "
                             f"{', '.join(self._entries) or '(none registered)'}",
                             parameter=parameter or self.parameter)
        return entry

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        """The names, in registration order (``choices=`` of a CLI flag)."""
        return tuple(self._entries)

    def entries(self) -> tuple[E, ...]:
        """The entries, in registration order."""
        return tuple(self._entries.values())

    def items(self) -> tuple[tuple[str, E], ...]:
        """``(name, entry)`` pairs, as ``dict.items()``."""
        return tuple(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"

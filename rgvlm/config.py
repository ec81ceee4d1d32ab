"""One way to declare and check a config, for every section of ``params.yaml``.

A config is a frozen dataclass that derives :class:`Config` and names its params.yaml section
(``SECTION``). Each field's annotation is its type; :func:`param` adds what else it allows
(bounds, choices, allowed mapping keys, no repeats, ...). Building a config, in Python or from a
section (:meth:`Config.from_section`), checks every field, then the class's cross-field rules
(:meth:`Config.check`); a bad value raises :class:`ParamError` with the key as params.yaml
spells it (``rg_vlm.window_length``, ``dataset.ks[1]``), the value and what is allowed. So the
rules of a field live next to the field, and a config object that exists is a valid one.

Types understood: ``bool``, ``int``, ``float`` (finite; an ``int`` is accepted), ``str``,
``X | None``, ``tuple[X, ...]`` (a list), ``dict[str, X]`` (a mapping), a union such as
``int | dict[str, int]`` (told apart by the value's shape) and a nested :class:`Config`. Bounds
and choices apply to a number or name, or to each item of a list or value of a mapping.

This module imports nothing from the project: every layer may use it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, ClassVar


class ParamError(ValueError):
    """A parameter with a value outside what is allowed."""

    def __init__(self, key: str, value: Any, expected: str):
        self.key, self.value, self.expected = key, value, expected
        super().__init__(f"params: {key}={value!r} is invalid: expected {expected}")


@dataclasses.dataclass(frozen=True)
class Allowed:
    """What one field allows beyond its type (see the module docstring)."""

    low: float | None = None  # >= low
    high: float | None = None  # <= high
    above: float | None = None  # > above
    below: float | None = None  # < below
    choices: tuple | None = None
    keys: tuple[str, ...] | None = None  # the keys a mapping may have
    nonempty: bool = False  # a list or mapping with at least one item
    unique: bool = False  # a list without repeats
    test: Callable[[Any], bool] | None = None  # a rule the others cannot say (with ``expected``)
    expected: str | None = None  # what is allowed, in words, instead of the generated description
    internal: bool = False  # set from Python only: not a params.yaml key
    inline: bool = False  # a nested config whose keys sit in this section itself (train's IQL fields)


def param(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, hash: bool | None = None,
          **allowed: Any) -> Any:
    """A dataclass field that carries what it allows (keyword arguments of :class:`Allowed`)."""
    return dataclasses.field(default=default, default_factory=default_factory, hash=hash,
                             metadata={"allowed": Allowed(**allowed)})


def as_section(raw: Any, key: str) -> Mapping[str, Any]:
    """``raw`` as a params section; a missing (null) section is an empty one."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ParamError(key, raw, "a mapping")
    return raw


class Config:
    """Base of every config dataclass (see the module docstring)."""

    SECTION: ClassVar[str]  # the params.yaml section; the prefix of every error's key
    # An int given for a float field becomes a float, as the field's type says. A class whose
    # field values are saved as they were given (checkpoints, provenance) sets this to False, so
    # that a file written before this mechanism existed is still matched byte for byte.
    FLOATS_AS_FLOAT: ClassVar[bool] = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.init:
                value = _checked(getattr(self, f.name), _hints(type(self))[f.name], _allowed(f),
                                 f"{self.SECTION}.{f.name}", type(self).FLOATS_AS_FLOAT)
                object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Rules between fields (each field's own rules are checked before); raise ParamError."""

    def _normalise(self, **values: Any) -> None:
        """Set fields from :meth:`check` (a frozen dataclass normalising itself once, on creation)."""
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def param_keys(cls) -> set[str]:
        """The params.yaml keys of the section (an inline config's keys included)."""
        known = set()
        for f in dataclasses.fields(cls):
            allowed = _allowed(f)
            if allowed.inline:
                known |= _hints(cls)[f.name].param_keys()
            elif not allowed.internal:
                known.add(f.name)
        return known

    @classmethod
    def from_section(cls, raw: Any):
        """The config of a params.yaml section: unknown keys, missing required keys and every
        value are checked, and a bad one raises ParamError naming ``<SECTION>.<key>``."""
        raw = as_section(raw, cls.SECTION)
        known = cls.param_keys()
        for key in raw:
            if key not in known:
                raise ParamError(f"{cls.SECTION}.{key}", raw[key], f"one of the keys {', '.join(sorted(known))}")
        values = {}
        for f in dataclasses.fields(cls):
            if _allowed(f).inline:
                nested = _hints(cls)[f.name]
                values[f.name] = nested.from_section({k: v for k, v in raw.items() if k in nested.param_keys()})
            elif f.name in raw:
                values[f.name] = raw[f.name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamError(f"{cls.SECTION}.{f.name}", None, "a value (the key is missing)")
        return cls(**values)


def replace_checked(config: Config, **changes: Any) -> Config:
    """A copy of a valid ``config`` with some fields changed: only those fields and the
    cross-field rules are checked again (``dataclasses.replace`` would check every field)."""
    new = copy.copy(config)
    fields = {f.name: f for f in dataclasses.fields(config)}
    for name, value in changes.items():
        checked = _checked(value, _hints(type(config))[name], _allowed(fields[name]), f"{config.SECTION}.{name}",
                           type(config).FLOATS_AS_FLOAT)
        object.__setattr__(new, name, checked)
    new.check()
    return new


# -- the checks ---------------------------------------------------------------------------
@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _allowed(f: dataclasses.Field) -> Allowed:
    return f.metadata.get("allowed", _NOTHING)


_NOTHING = Allowed()


def describe(hint: Any, allowed: Allowed) -> str:
    """What a field allows, in words (the ``expected`` of its errors)."""
    if allowed.expected:
        return allowed.expected
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = [describe(a, allowed) for a in args if a is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    if origin is tuple:
        item = describe(args[0], dataclasses.replace(allowed, nonempty=False, unique=False, keys=None))
        return f"a {'non-empty ' if allowed.nonempty else ''}list, each {item}"
    if origin is dict:
        item = describe(args[1], dataclasses.replace(allowed, nonempty=False, keys=None))
        keys = f" with keys among {', '.join(allowed.keys)}" if allowed.keys else ""
        return f"a {'non-empty ' if allowed.nonempty else ''}mapping{keys}, each value {item}"
    if allowed.choices is not None:
        return f"one of {', '.join(map(str, allowed.choices))}"
    if hint is bool:
        return "true or false"
    if isinstance(hint, type) and issubclass(hint, Config):
        return f"a mapping of the keys {', '.join(sorted(hint.param_keys()))}"
    if hint is int:
        if allowed.low is None and allowed.high is None:
            return "an integer"
        return f"an integer in {'' if allowed.low is None else allowed.low}..{'' if allowed.high is None else allowed.high}"
    if hint is float:
        low = f"[{allowed.low}" if allowed.low is not None else f"({allowed.above}" if allowed.above is not None else None
        high = f"{allowed.high}]" if allowed.high is not None else f"{allowed.below})" if allowed.below is not None else None
        if low and high:
            return f"a number in {low}, {high}"
        if low:
            return f"a number {'>=' if low[0] == '[' else '>'} {low[1:]}"
        if high:
            return f"a number {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
        return "a number"
    if hint is str:
        return "a string"
    return getattr(hint, "__name__", str(hint))


def _checked(value: Any, hint: Any, allowed: Allowed, key: str, floats_as_float: bool) -> Any:
    """``value`` as the field holds it (a list as a tuple, a mapping as a dict, ...), or ParamError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def fail() -> typing.NoReturn:
        raise ParamError(key, value, describe(hint, allowed))

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        # The alternatives are told apart by the value's shape (scalar, list or mapping).
        matching = [a for a in args if a is not type(None) and _shape(a) == _shape_of(value)]
        if not matching:
            fail()
        try:
            return _checked(value, matching[0], allowed, key, floats_as_float)
        except ParamError as error:
            if error.key != key:
                raise
            fail()  # the whole union's description: "a string or null", not just "a string"
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (allowed.nonempty and not value):
            fail()
        item = dataclasses.replace(allowed, nonempty=False, unique=False, test=None, expected=None)
        if len(args) == 2 and args[1] is Ellipsis:
            items = tuple(_checked(v, args[0], item, f"{key}[{i}]", floats_as_float) for i, v in enumerate(value))
        elif len(value) == len(args):
            items = tuple(_checked(v, a, item, f"{key}[{i}]", floats_as_float) for i, (v, a) in enumerate(zip(value, args, strict=True)))
        else:
            fail()
        if allowed.unique and len(set(items)) != len(items):
            raise ParamError(key, value, "a list without repeats")
        value = items
    elif origin is dict:
        if not isinstance(value, Mapping) or (allowed.nonempty and not value):
            fail()
        for k in value:
            if not isinstance(k, str) or (allowed.keys is not None and k not in allowed.keys):
                raise ParamError(f"{key}.{k}", value[k], f"one of the keys {', '.join(allowed.keys or ())}"
                                 if allowed.keys else "a name")
        item = dataclasses.replace(allowed, nonempty=False, keys=None, test=None, expected=None)
        value = {k: _checked(v, args[1], item, f"{key}.{k}", floats_as_float) for k, v in value.items()}
    elif isinstance(hint, type) and issubclass(hint, Config):
        if not isinstance(value, hint):
            value = hint.from_section(value)
    elif hint is bool:
        if not isinstance(value, bool):
            fail()
    elif hint is int or hint is float:
        if isinstance(value, bool) or not isinstance(value, int if hint is int else (int, float)):
            fail()
        if hint is float:
            if not math.isfinite(value):
                fail()
            value = float(value) if floats_as_float else value
        if allowed.choices is not None and value not in allowed.choices:
            fail()
        if ((allowed.low is not None and value < allowed.low) or (allowed.high is not None and value > allowed.high)
                or (allowed.above is not None and value <= allowed.above)
                or (allowed.below is not None and value >= allowed.below)):
            fail()
    elif hint is str:
        if not isinstance(value, str) or (allowed.choices is not None and value not in allowed.choices):
            fail()
    elif hint is not Any:
        raise TypeError(f"{key}: the config mechanism does not know the type {hint!r}")
    if allowed.test is not None and not allowed.test(value):
        fail()
    return value


def _shape(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is dict or (isinstance(hint, type) and issubclass(hint, Config)):
        return "mapping"
    return "list" if origin is tuple else "scalar"


def _shape_of(value: Any) -> str:
    return "mapping" if isinstance(value, Mapping) else "list" if isinstance(value, (list, tuple)) else "scalar"

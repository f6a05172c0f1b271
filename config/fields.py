"""Config dataclass fields with their constraints, and the one function that checks them.

A constrained field is declared next to its default, e.g. `d_model: int = positive(50)` or
`dropout: float = fraction(0.2)`; `check_fields(config)` tests every such field of a config
section and raises one ConfigError naming `section.key=value`. Cross-field rules live in the
section's own `check()` method. Plain frozen dataclasses with field metadata rather than
pydantic: the sections stay the JSON-round-tripping dataclasses the specs already build, each
rule sits on its field's line, and there is no second schema system to learn or to keep in step.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, ClassVar, Literal

Check = Callable[[Any], bool]


class ConfigError(ValueError):
    """A bad configuration key or value; the message names it."""


def constrained(default: Any, check: Check, rule: str) -> Any:
    """A dataclass field whose value must satisfy `check`; `rule` completes "must be ..."."""
    return dataclasses.field(default=default, metadata={"check": check, "rule": rule})


def positive(default: int | float) -> Any:
    return constrained(default, lambda v: v >= 1 if isinstance(default, int) else math.isfinite(v) and v > 0,
                       ">= 1" if isinstance(default, int) else "finite and > 0")


def non_negative(default: int | float, rule: str = ">= 0") -> Any:
    return constrained(default, lambda v: math.isfinite(v) and v >= 0, rule)


def fraction(default: float) -> Any:
    """A probability that cannot be 1 (dropout): 0 <= value < 1."""
    return constrained(default, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def open_unit(default: float) -> Any:
    """0 < value < 1 (Adam's betas)."""
    return constrained(default, lambda v: 0.0 < v < 1.0, "in (0, 1)")


class Section:
    """Mixin of config sections. SECTION names the section in messages ("model", "train").

    Trial ids hash `canonical()`: ID_FIELDS always (the fields the section had when ids were
    first taken, 2026-12-01), any other field only when it differs from its default, so adding a
    field whose default keeps today's behaviour changes no id. OBSERVATION fields (when a run is
    looked at, not what it trains) never enter it: changing them continues the same trial."""

    SECTION: ClassVar[str] = ""
    ID_FIELDS: ClassVar[tuple[str, ...]] = ()
    OBSERVATION: ClassVar[tuple[str, ...]] = ()

    def canonical(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if field.name not in self.OBSERVATION
                and (field.name in self.ID_FIELDS or getattr(self, field.name) != field.default)}

    def check(self) -> None:
        """Cross-field rules of the section; raise ConfigError naming the keys."""

    def __post_init__(self) -> None:
        check_fields(self)
        self.check()


def check_fields(config: Any) -> None:
    """Raise ConfigError for the first constrained field whose value breaks its rule."""
    section = getattr(config, "SECTION", "")
    for field in dataclasses.fields(config):
        check_value(field, getattr(config, field.name), f"{section}.{field.name}")


def check_value(field: dataclasses.Field, value: Any, key: str) -> None:
    """Raise ConfigError naming `key` when `value` breaks the field's rule (if it has one)."""
    check = field.metadata.get("check")
    if check is None:
        return
    try:
        ok = bool(check(value))
    except TypeError:
        ok = False
    if not ok:
        raise ConfigError(f"{key}={value!r} must be {field.metadata['rule']}")


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check or convert a JSON value (or a `--set` string) to a field's declared type."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}; allowed: {', '.join(map(str, allowed))}")
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        raise ConfigError(f"{key}={value!r} is not a boolean")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} is not an integer")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r} is not a number")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}={value!r} is not a string")
    raise ConfigError(f"{key}: unsupported field type {annotation}")


def build_section(cls: type, values: Any, prefix: str) -> Any:
    """An instance of the dataclass `cls` from a JSON object; unknown keys and wrong types name the key."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be an object, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}; known: {', '.join(sorted(fields))}")
    return cls(**{name: coerce(value, hints[name], f"{prefix}{name}") for name, value in values.items()})

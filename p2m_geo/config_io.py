"""Strict loading of dataclass configs: type coercion from the dataclass hints, range
checks, renamed keys, unknown-key errors that name the key, and YAML without aliases.
The configuration itself is :mod:`p2m_geo.config`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Dict, Type, TypeVar, Union, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "merge_dicts", "from_dict", "to_dict", "read_yaml_dict", "MAX_CONFIG_BYTES"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value that does not fit the schema."""


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of user data, cut to ``limit`` characters (never a huge line in an error)."""
    text = repr(value) if not isinstance(value, (dict, list, tuple)) else f"a {type(value).__name__} of {len(value)}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(condition: bool, where: str, expected: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{where}: expected {expected}, got {_short(value)}")


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the dataclass field type ``hint`` (bool, int, float, str, Optional[str],
    tuple of ints, Tuple[float, ...]); a number written as a string (YAML reads ``1e-3`` as one) becomes a float."""
    if get_origin(hint) is Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in get_args(hint) if a is not type(None))
    if hint is bool:
        _check(isinstance(value, bool), where, "true or false", value)
        return value
    if hint is int:
        integral = isinstance(value, int) or (isinstance(value, float) and math.isfinite(value) and value.is_integer())
        _check(integral and not isinstance(value, bool), where, "an integer", value)
        return int(value)
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {_short(value)}") from None
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), where, "a number", value)
        return float(value)
    if hint is str:
        _check(isinstance(value, str), where, "a string", value)
        return value
    if hint is tuple or get_origin(hint) is tuple:
        item_hint = float if get_args(hint)[:1] == (float,) else int  # Tuple[float, ...] or tuple (of ints)
        _check(
            isinstance(value, (list, tuple)),
            where,
            f"a list of {'numbers' if item_hint is float else 'integers'}",
            value,
        )
        return tuple(_coerce(item, item_hint, f"{where}[{index}]") for index, item in enumerate(value))
    return value


def _check_ranges(section: str, instance: Any, rules: Dict[str, Any]) -> None:
    """``rules``: field -> (predicate, what is expected); also refuses NaN/inf floats."""
    for name, (predicate, expected) in rules.items():
        value = getattr(instance, name)
        finite = not isinstance(value, float) or math.isfinite(value)
        _check(finite and predicate(value), f"{section}.{name}", expected, value)


def merge_dicts(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    """Recursive dict merge (``override`` wins); neither input is modified."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def from_dict(cls: Type[T], values: Dict[str, Any], section: str = "") -> T:
    """Build dataclass ``cls`` from ``values``; unknown keys raise :class:`ConfigError`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{section or 'config'}: expected a mapping, got {_short(values)}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    renamed = getattr(cls, "RENAMED_KEYS", {})
    kwargs = {}
    for key, value in values.items():
        if key in renamed and renamed[key] not in values:  # configs/checkpoints written before a rename
            key = renamed[key]
        name = key if isinstance(key, str) and len(key) <= 60 else _short(key)
        where = f"{section}.{name}" if section else name
        if key not in known:
            raise ConfigError(f"{where}: unknown key (expected one of {', '.join(known)})")
        hint = hints[key]
        kwargs[key] = from_dict(hint, value, where) if is_dataclass(hint) else _coerce(value, hint, where)
    return cls(**kwargs)


def to_dict(config: Any) -> Dict[str, Any]:
    """Plain nested dict (lists for tuples) that YAML and ``torch.load(weights_only=True)`` accept."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


#: configs are a few hundred bytes; anything this large is not one
MAX_CONFIG_BYTES = 1024 * 1024


def read_yaml_dict(path: str | Path) -> Dict[str, Any]:
    """A YAML mapping from ``path`` (safe loader); errors name the file."""
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """Safe loading without anchors/aliases: a few hundred bytes of nested aliases
        ("billion laughs") would otherwise expand to gigabytes."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                raise ConfigError(f"config: expected plain YAML without aliases (*name), got one in {path}")
            return super().compose_node(parent, index)

    try:
        size = Path(path).stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"config: expected a YAML file under {MAX_CONFIG_BYTES // 1024} KiB, got {size} bytes in {path}"
            )
        with open(path, "r", encoding="utf-8") as handle:
            values = yaml.load(handle, Loader=NoAliasLoader) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as error:
        raise ConfigError(f"config: expected a readable YAML file, got {path} ({type(error).__name__})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config: expected a YAML mapping in {path}, got {type(values).__name__}")
    return values

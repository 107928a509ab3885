"""Strict YAML configs: each subsystem owns a dataclass section; unknown keys are errors.

A config file has top-level sections (`model`, `data`, `train`, `decode`); each
subsystem parses its own with `parse_section`, so a typo such as `d_modle` is reported
as `config.yaml: model.encoder: unknown key 'd_modle' (known: ...)` instead of being
silently ignored. A numeric field declares its allowed values with `bounded(default,
ge=..., le=...)`; `parse_section` checks them as it reads, naming the field:
`config.yaml: model.encoder.dropout must be in [0, 1], got 1.5`. Checks that relate
several fields stay in the dataclass's `__post_init__`. `load_config` reads a whole
config file and checks every section it holds.
"""

import dataclasses
import importlib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from u2moe.data.files import write_text_atomic
from u2moe.errors import UserError

T = TypeVar("T")


class ConfigError(UserError):
    """A malformed or inconsistent config."""


# section -> "module:class" of its dataclass (imported when a config is checked)
SECTIONS = {
    "model": "u2moe.model.config:ModelConfig",
    "data": "u2moe.data.config:DataConfig",
    "train": "u2moe.train.config:TrainConfig",
    "decode": "u2moe.decode.config:DecodeConfig",
}


@dataclasses.dataclass(frozen=True)
class Bounds:
    """The allowed values of a numeric field: low..high (either may be open or absent),
    or one of `also` (special values such as -1 for "all")."""

    low: float | None = None
    low_closed: bool = True
    high: float | None = None
    high_closed: bool = True
    also: tuple = ()

    def __contains__(self, value) -> bool:
        if value in self.also:
            return True
        if self.low is not None and not (
            value >= self.low if self.low_closed else value > self.low
        ):
            return False
        return self.high is None or (value <= self.high if self.high_closed else value < self.high)

    def __str__(self) -> str:
        low, high = _num(self.low), _num(self.high)
        if self.low is not None and self.high is not None:
            left, right = "[("[not self.low_closed], "])"[not self.high_closed]
            text = f"in {left}{low}, {high}{right}"
        elif self.low is not None:
            text = f"{'>=' if self.low_closed else '>'} {low}"
        else:
            text = f"{'<=' if self.high_closed else '<'} {high}"
        return " or ".join([*map(_num, self.also), text])


def bounded(default, *, ge=None, gt=None, le=None, lt=None, also: tuple = ()) -> Any:
    """A dataclass field whose value `parse_section` checks: `bounded(0.1, ge=0, le=1)` is
    [0, 1], `bounded(10, gt=0)` is > 0, `bounded(-1, ge=1, also=(-1,))` is -1 or >= 1."""
    low, high = (ge, True) if gt is None else (gt, False), (le, True) if lt is None else (lt, False)
    bounds = Bounds(low[0], low[1], high[0], high[1], also)
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def _num(value) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def load_config(path: str | Path) -> dict[str, Any]:
    """A config file's sections, each checked (unknown sections, keys, types and ranges)."""
    config = load_yaml(path)
    for name, value in config.items():
        if name not in SECTIONS:
            raise ConfigError(f"{path}: unknown section '{name}' (known: {', '.join(SECTIONS)})")
        module, cls = SECTIONS[name].split(":")
        parse_section(getattr(importlib.import_module(module), cls), value, f"{path}: {name}")
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML config (not UTF-8 text)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def save_yaml(data: dict[str, Any], path: str | Path) -> None:
    """Write a mapping as YAML atomically (temporary file, then rename)."""
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def parse_section(cls: type[T], data: dict[str, Any] | None, where: str) -> T:
    """Build dataclass `cls` from `data`, recursing into nested dataclass fields.

    `where` names the place for error messages, e.g. "small.yaml: model.encoder".
    Missing keys take the dataclass defaults; unknown keys and wrong types raise
    ConfigError, as do values outside a field's `bounded` range. Ints are accepted where
    floats are expected.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' (known: {', '.join(sorted(fields))})"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        values[name] = _convert(hints[name], value, f"{where}.{name}")
        bounds = fields[name].metadata.get("bounds")
        if bounds is not None and values[name] is not None and values[name] not in bounds:
            raise ConfigError(f"{where}.{name} must be {bounds}, got {value!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError, ConfigError) as e:
        raise ConfigError(f"{where}: {e}") from None


def as_dict(section: Any) -> dict[str, Any]:
    """The plain-dict form of a parsed section (what `save_yaml` writes)."""
    return dataclasses.asdict(section)


def _convert(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return parse_section(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return origin(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (
        not isinstance(value, hint) or (hint is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value

"""Settings derived mechanically from an options dataclass: command-line flags and TOML keys.

A field marked with `option(help)` is the flag `--field-name` (underscores
become dashes) and the TOML key `field_name` (or `field-name`, as the flag is
spelt), with the field's type and default; nothing spells it a second time.
Scalars are plain flags; a `Mapping[str, str]` field takes repeated
`--name NAME=VALUE` flags (a table in TOML); a `list[str]` field repeated
`--name VALUE` flags (an array in TOML). Flags override the file; mappings and
lists add to it.
"""

from __future__ import annotations

import dataclasses
import inspect
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar

from ravi._hints import did_you_mean

_KEY = "ravi.option"

T = TypeVar("T")


class SettingsError(ValueError):
    """A flag, a config file or a value that cannot configure the command."""


@dataclasses.dataclass(frozen=True)
class _Option:
    help: str
    envvar: str | None
    metavar: str | None


def option(
    help: str, *, envvar: str | None = None, metavar: str | None = None
) -> Mapping[str, Any]:
    """The field metadata that makes a dataclass field a flag and a config key.

    `metavar` is how `--help` shows the value (`HOST:PORT`); by default it
    follows the type (`SECONDS` for a float, `N` for an int, `FILE` for a path).
    """
    return {_KEY: _Option(help, envvar, metavar)}


@dataclasses.dataclass(frozen=True)
class Setting:
    """One field of an options dataclass, as a flag and a config key."""

    name: str
    kind: type
    shape: str
    """scalar, flag (a bool), pairs (Mapping[str, str]) or list (list[str])."""
    help: str
    envvar: str | None
    default: Any
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def settings(cls: type[Any]) -> list[Setting]:
    """The fields of `cls` marked with `option()`, in declaration order."""
    hints = typing.get_type_hints(cls)
    found = []
    for field in dataclasses.fields(cls):
        marked = field.metadata.get(_KEY)
        if not isinstance(marked, _Option):
            continue
        kind, shape = _shape(field.name, hints[field.name])
        if field.default is not dataclasses.MISSING:
            default: Any = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = None
        found.append(
            Setting(field.name, kind, shape, marked.help, marked.envvar, default, marked.metavar)
        )
    return found


def _shape(name: str, hint: Any) -> tuple[type, str]:
    origin = typing.get_origin(hint)
    if origin in (UnionType, typing.Union):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return _shape(name, inner[0])
    elif origin in (dict, Mapping):
        return str, "pairs"
    elif origin in (list, Sequence):
        return str, "list"
    if hint is bool:
        return bool, "flag"
    if hint in (str, int, float, Path):
        return hint, "scalar"
    raise TypeError(f"option {name!r} has a type no flag can carry: {hint!r}")


_METAVARS = {str: "TEXT", int: "N", float: "SECONDS", Path: "FILE"}


def parameters(*classes: type[Any]) -> list[inspect.Parameter]:
    """The keyword parameters of a typer command taking every setting of `classes`.

    Each defaults to None, "not given", so the file or the field's default applies;
    `--help` shows the field's default.
    """
    import typer  # noqa: PLC0415 - only the command line needs it

    found = []
    for cls in classes:
        for setting in settings(cls):
            metavar = setting.metavar or _METAVARS.get(setting.kind, "VALUE")
            if setting.shape == "flag":
                declared = typer.Option(
                    f"{setting.flag}/--no-{setting.flag[2:]}", help=_help(setting)
                )
                annotation: Any = Annotated[bool | None, declared]
            elif setting.shape in ("pairs", "list"):
                declared = typer.Option(
                    setting.flag,
                    help=f"{setting.help} Repeatable.",
                    envvar=setting.envvar,
                    metavar=metavar,
                )
                annotation = Annotated[list[str] | None, declared]
            else:
                declared = typer.Option(
                    setting.flag, help=_help(setting), envvar=setting.envvar, metavar=metavar
                )
                annotation = Annotated[setting.kind | None, declared]
            found.append(
                inspect.Parameter(
                    setting.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=annotation,
                )
            )
    return found


def _help(setting: Setting) -> str:
    """The help of a setting, with its default when it has a telling one."""
    value = setting.default
    if value is None or value is False or value == "" or isinstance(value, Mapping | list):
        return setting.help
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{setting.help} [default: {shown}]"


def read_config(path: Path, *classes: type[Any]) -> dict[str, Any]:
    """The settings a TOML file holds, by field name.

    A key is the field's name (`node_id`) or the flag's (`node-id`); an
    unknown key is an error that lists the known ones and the nearest.
    """
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read {path}: {exc}") from exc
    known = [s.name for cls in classes for s in settings(cls)]
    found: dict[str, Any] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in known:
            keys = ", ".join(sorted(k.replace("_", "-") for k in known))
            nearest = did_you_mean(name.replace("_", "-"), [k.replace("_", "-") for k in known])
            raise SettingsError(f'{path}: unknown key "{key}"{nearest}; the keys are: {keys}')
        if name in found:
            raise SettingsError(f"{path}: {key} is given twice, with dashes and with underscores")
        found[name] = value
    return found


def build(cls: type[T], given: Mapping[str, Any], config: Mapping[str, Any]) -> T:
    """An instance of `cls` from flags (`given`, None for absent) over a config file's values."""
    values: dict[str, Any] = {}
    for setting in settings(cls):
        flag = given.get(setting.name)
        if setting.shape == "pairs":
            merged = dict(_table(setting, config.get(setting.name, {})))
            merged.update(pairs(flag or [], setting.flag))
            values[setting.name] = merged
        elif setting.shape == "list":
            values[setting.name] = [*_array(setting, config.get(setting.name, [])), *(flag or [])]
        elif flag is not None:
            values[setting.name] = flag
        elif setting.name in config:
            values[setting.name] = _scalar(setting, config[setting.name])
    try:
        return cls(**values)
    except ValueError as exc:
        raise SettingsError(str(exc)) from exc


def pairs(values: Sequence[str], what: str) -> dict[str, str]:
    """Parse repeated NAME=VALUE options."""
    parsed: dict[str, str] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise SettingsError(f"{what} must be NAME=VALUE, got {value!r}")
        parsed[name] = rest
    return parsed


def _table(setting: Setting, value: Any) -> Mapping[str, str]:
    # As the flag repeated (an array of "NAME=VALUE") or as a table (NAME = "VALUE").
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return pairs(value, setting.name)
    if not isinstance(value, Mapping) or not all(isinstance(v, str) for v in value.values()):
        raise SettingsError(
            f'{setting.name} must be a table of strings ({setting.name} = {{ NAME = "VALUE" }}) '
            f'or an array of "NAME=VALUE", got {value!r}'
        )
    return value


def _array(setting: Setting, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{setting.name} must be an array of strings, got {value!r}")
    return value


def _scalar(setting: Setting, value: Any) -> Any:
    kind = setting.kind
    if kind is Path and isinstance(value, str):
        return Path(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SettingsError(f"{setting.name} must be a {kind.__name__}, got {value!r}")
    return value

"""Config fields that carry their own help, choices, bounds and unit (in the style of peft's
configs): the one source from which `validate` checks a config, the CLI builds its flags, the page
builds its controls and the README's API table is written. A test fails when any of them drifts.

    ratio: float = option(0.2, "fraction of groups to remove", bounds=Range(0.0, 1.0, hi_closed=False),
                          unit="share of groups", label="ratio of groups")
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields


@dataclass(frozen=True)
class Range:
    """Numeric bounds; None = unbounded on that side."""
    lo: float | None = None
    hi: float | None = None
    lo_closed: bool = True
    hi_closed: bool = True

    def contains(self, value: float) -> bool:
        if self.lo is not None and (value < self.lo or (value == self.lo and not self.lo_closed)):
            return False
        return not (self.hi is not None and (value > self.hi or (value == self.hi and not self.hi_closed)))

    def text(self) -> str:
        if self.hi is None:
            return f">= {self.lo:g}" if self.lo_closed else f"> {self.lo:g}"
        if self.lo is None:
            return f"<= {self.hi:g}" if self.hi_closed else f"< {self.hi:g}"
        return f"in {'[' if self.lo_closed else '('}{self.lo:g}, {self.hi:g}{']' if self.hi_closed else ')'}"


def option(default, help: str, *, choices: tuple | None = None, bounds: Range | None = None,
           unit: str = "", label: str = "", type=None, flag: str | None = None):
    """A dataclass field with its documentation. `type` where the default (None) does not say it;
    `flag`: the CLI flag (default: --the-field-name); `label`: the page's short label."""
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds,
                                             "unit": unit, "label": label, "type": type, "flag": flag})


@dataclass(frozen=True)
class Option:
    name: str
    default: object
    help: str
    choices: tuple | None
    bounds: Range | None
    unit: str
    label: str
    type: type
    flag: str

    @property
    def dest(self) -> str:
        """The argparse attribute of the CLI flag."""
        return self.flag.lstrip("-").replace("-", "_")

    def info(self) -> str:
        """The help sentence with its bounds and unit, as the page's info text and the CLI's help."""
        extra = [self.bounds.text()] if self.bounds else []
        if self.unit:
            extra.append(self.unit)
        return self.help + (f" ({'; '.join(extra)})" if extra else "")


def options(config_cls) -> dict[str, Option]:
    """The documented fields of a config class, in declaration order."""
    out = {}
    for f in fields(config_cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        default = f.default if f.default is not MISSING else None
        kind = meta["type"] or (type(default) if default is not None else str)
        out[f.name] = Option(f.name, default, meta["help"], meta["choices"], meta["bounds"], meta["unit"],
                             meta["label"] or f.name.replace("_", " "), kind,
                             meta["flag"] or "--" + f.name.replace("_", "-"))
    return out


def check(config) -> None:
    """ValueError naming the field for any value outside its choices or bounds (None = unset)."""
    for opt in options(type(config)).values():
        value = getattr(config, opt.name)
        if value is None:
            continue
        if opt.choices is not None and value not in opt.choices:
            raise ValueError(f"{opt.name} must be one of {opt.choices}, got {value!r}")
        if opt.bounds is not None and not opt.bounds.contains(float(value)):
            raise ValueError(f"{opt.name} must be {opt.bounds.text()}, got {value}")


def add_arguments(parser, config_cls, names: list[str], defaults_from: str = "") -> dict[str, str]:
    """CLI flags for `names` (defaults None: `defaults_from` says what applies when a flag is not
    given); returns {field name: argparse dest}."""
    opts, dests = options(config_cls), {}
    for name in names:
        opt = opts[name]
        help_ = (opt.info() + (f"; default: {defaults_from}" if defaults_from else "")).replace("%", "%%")
        if opt.type is bool:
            action = parser.add_argument(opt.flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            action = parser.add_argument(opt.flag, type=opt.type, default=None, choices=opt.choices, help=help_)
        dests[name] = action.dest
    return dests


def markdown_table(config_cls, names: list[str] | None = None) -> str:
    """The README's API table of a config class."""
    opts = options(config_cls)
    rows = ["| field | CLI flag | default | values | meaning |", "|---|---|---|---|---|"]
    for name in names or list(opts):
        opt = opts[name]
        values = ", ".join(map(str, opt.choices)) if opt.choices else (opt.bounds.text() if opt.bounds else "")
        if opt.unit:
            values = f"{values} {opt.unit}".strip()
        flag = f"--[no-]{opt.flag[2:]}" if opt.type is bool else opt.flag
        rows.append(f"| `{name}` | `{flag}` | `{opt.default!r}` | {values} | {opt.help} |")
    return "\n".join(rows)

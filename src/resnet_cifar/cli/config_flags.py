"""`train`'s flags, generated from the Config fields' metadata (config.option): one source for the
name, type, choices, --help group and help text of every config value. --help shows each preset's
value where the presets differ from the default."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, Field, fields

from ..config import GROUPS, PRESET_VALUES, PRESETS, Config

SKIP = {"preset"}    # flags of their own (train_cmd): --preset


def flag_name(f: Field) -> str:
    return "--" + (f.metadata.get("flag") or f.name).replace("_", "-")


def _default(f: Field):
    return f.default_factory() if f.default is MISSING else f.default


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(f"{v:g}" for v in value)
    return "''" if value == "" else str(value)


def preset_note(f: Field) -> str:
    """'(default: X)' or '(tutorial: X, fast: Y)' when the presets set different values."""
    negated = f.metadata.get("negated")
    values = {}
    for name in PRESETS:
        v = PRESET_VALUES[name].get(f.name, _default(f))
        values[name] = (not v) if negated else v
    shown = {k: _show(v) for k, v in values.items()}
    if len(set(shown.values())) == 1:
        return f"(default: {next(iter(shown.values()))})"
    return "(" + ", ".join(f"{k}: {v}" for k, v in shown.items()) + ")"


def _add_one(g, f: Field) -> None:
    m = f.metadata
    kind = type(_default(f))
    text = f"{m['help']} {preset_note(f)}".replace("%", "%%")
    flag = flag_name(f)
    if kind is bool and m.get("negated"):
        g.add_argument(flag, dest=f.name, action="store_const", const=False, help=text)
        g.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const=True,
                       help=f"the opposite of {flag}")
    elif kind is bool:
        g.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=text)
    else:
        typ = {int: int, float: float}.get(kind, str)
        g.add_argument(flag, dest=f.name, type=typ, choices=m.get("choices"), metavar=m.get("metavar"), help=text)
    for alias, value in m.get("aliases", ()):  # old spellings: accepted, not shown in --help
        g.add_argument(alias, dest=f.name, action="store_const", const=value, help=argparse.SUPPRESS)


def add_config_flags(p: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One flag per Config field (default None: unset flags do not override preset or file), grouped."""
    groups = {name: p.add_argument_group(name) for name in GROUPS}
    for f in fields(Config):
        if f.name in SKIP:
            continue
        _add_one(groups[f.metadata["group"]], f)
    return groups


def config_flag_values(args: argparse.Namespace) -> dict:
    """The config values given as flags (the Config field names that were set)."""
    names = {f.name for f in fields(Config)} - SKIP
    return {k: v for k, v in vars(args).items() if k in names and v is not None}

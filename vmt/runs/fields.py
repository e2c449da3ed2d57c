"""Declared parameters of a run request: a dataclass field carries its range or its choices, so that the
request can check itself and the command line derives its checks from the same declaration.

    steps: int = number(50, AT_LEAST_1, "denoising steps")
    grid: str = choice("model", GRIDS, "sampling grid")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from vmt.errors import VmtUsageError, param


@dataclass(frozen=True)
class Range:
    """Allowed values of a number: lo/hi bounds (None: unbounded), open or closed; inf only if `inf_ok`."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    inf_ok: bool = False

    def describe(self) -> str:
        def num(x: float) -> str:
            return str(x) if isinstance(x, int) else f"{x:g}"  # 2**64 - 1 as written, not 1.84467e+19

        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '>='} {num(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '<='} {num(self.hi)}")
        return " and ".join(parts) or "finite"

    def holds(self, v: float) -> bool:
        # Integers are compared as integers: a float cannot tell 2**64 - 1 from 2**64.
        if isinstance(v, float) and (math.isnan(v) or (math.isinf(v) and not self.inf_ok)):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return not (self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi))


POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
UNIT = Range(0, 1)
# Seeds seed 64-bit generators: a negative or larger seed would silently wrap onto another one.
SEED = Range(0, 2**64 - 1)
# Frame rates ffmpeg writes and reads sensibly: below 1 fps its timestamps overflow, above 240 a file breaks.
FPS = Range(1, 240)


def number(default: Any, rng: Range | None = None, doc: str = "") -> Any:
    """A numeric parameter with its allowed range (None: finite)."""
    return field(default=default, metadata={"range": rng, "doc": doc})


def choice(default: str, options: Iterable[str], doc: str = "") -> Any:
    """A parameter that takes one of `options`."""
    return field(default=default, metadata={"choices": tuple(options), "doc": doc})


def text(default: Any = MISSING, doc: str = "", empty_ok: bool = False) -> Any:
    """A text parameter; empty text is refused unless `empty_ok` (an unset shell variable is no value)."""
    return field(default=default, metadata={"empty_ok": empty_ok, "doc": doc})


def ranges_of(cls: type) -> dict[str, Range]:
    """Parameter -> Range of a request class (what the command line checks before any work)."""
    return {f.name: f.metadata["range"] for f in fields(cls) if f.metadata.get("range") is not None}


def choices_of(cls: type) -> dict[str, tuple[str, ...]]:
    return {f.name: f.metadata["choices"] for f in fields(cls) if "choices" in f.metadata}


def check_fields(request: Any) -> None:
    """Every declared range and choice of a request holds, and no text is empty unless declared `empty_ok` (an
    unset shell variable is no value); raises VmtUsageError naming the parameter."""
    for f in fields(request):
        value = getattr(request, f.name)
        rng, options = f.metadata.get("range"), f.metadata.get("choices")
        if isinstance(value, float) and not math.isfinite(value) and not (rng is not None and rng.inf_ok):
            raise VmtUsageError(f"{param(f.name)} must be a finite number, got {value}")
        if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
                and not rng.holds(value):
            raise VmtUsageError(f"{param(f.name)} must be {rng.describe()}, got {value}")
        if options is not None and value not in options:
            raise VmtUsageError(f"{param(f.name)} {value!r}: use one of {', '.join(options)}")
        if isinstance(value, str) and not value.strip() and not f.metadata.get("empty_ok", False):
            raise VmtUsageError(f"{param(f.name)} is empty; give a value")


def value_types(cls: type) -> dict[str, tuple[type, bool]]:
    """Field name -> (base type, is a list) of a request class, from its annotations: `int | None` -> (int,
    False), `list[str] | None` -> (str, True). Recipes and batch lines convert their values with these."""
    import types
    import typing

    if cls in _TYPES:
        return _TYPES[cls]
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        hint, is_list = hints[f.name], False
        for _ in range(3):  # peel Optional[...] and list[...]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            origin = typing.get_origin(hint)
            if origin in (typing.Union, types.UnionType) and len(args) == 1:
                hint = args[0]
            elif origin is list and args:
                hint, is_list = args[0], True
        out[f.name] = (hint if isinstance(hint, type) else str, is_list)
    _TYPES[cls] = out
    return out


_TYPES: dict[type, dict[str, tuple[type, bool]]] = {}
_TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string"}


def convert_value(base: type, is_list: bool, value: Any) -> Any:
    """A value from a typed file (TOML recipe, JSON job line) in the parameter's own type; ValueError naming
    the expected type when it does not fit. Nothing is coerced: "no" is not a boolean, 2.5 is not an integer."""
    from pathlib import Path

    if is_list:
        if not isinstance(value, list):
            raise ValueError(f"a list ({_TYPE_NAMES.get(base, 'a string')} each)")
        return [convert_value(base, False, v) for v in value]
    if base is bool:
        ok = isinstance(value, bool)
    elif base is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif base is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError("a path (string)" if base is Path else _TYPE_NAMES.get(base, "a string"))
    return Path(value).expanduser() if base is Path else value


def request_from(cls: type, values: Mapping[str, Any]) -> Any:
    """The request of class `cls` from a mapping that holds its fields (other keys, such as the command line's
    run options, are left out)."""
    return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})

"""Recipes shipped with vmt: TOML files of published setups, one folder per command family
(refine, transfer, longgen, predict-keypoints), kept in the repository's top-level `recipes/` folder.
`--recipe NAME` finds one there; `vmt recipes` lists them. An installed vmt has them as the package data of
`vmt._recipes` (pyproject.toml maps that package to `recipes/`)."""

from __future__ import annotations

import importlib.util
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmt.errors import VmtUsageError, param


def _recipes_dir() -> Path:
    """The top-level `recipes/` folder when this vmt is a source checkout (run from the repository, or an
    editable install), else the installed copy: the folder of the package `vmt._recipes`."""
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "recipes").is_dir():
        return root / "recipes"
    spec = importlib.util.find_spec("vmt._recipes")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return root / "recipes"  # not there: no shipped recipes (list_recipes is empty)


RECIPES_DIR = _recipes_dir()


@dataclass(frozen=True)
class Recipe:
    name: str  # file stem, what `--recipe NAME` takes
    family: str  # the folder: refine | transfer | longgen | predict-keypoints
    path: Path
    about: str  # one line from its [meta] table


def _about(path: Path) -> str:
    try:
        meta = tomllib.loads(path.read_text()).get("meta", {})
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    for key in ("about", "description", "notes", "note", "source"):
        if isinstance(meta.get(key), str):
            return " ".join(meta[key].split())
    return ""


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, sorted by family and name."""
    return [Recipe(p.stem, p.parent.name, p, _about(p)) for p in sorted(RECIPES_DIR.glob("*/*.toml"))]


def family(command: str) -> str:
    """The recipe folder of a command: "longgen-train" -> "longgen", "predict-keypoints-run" -> ..."""
    for fam in ("predict-keypoints", "longgen"):
        if command.startswith(fam):
            return fam
    return command


def find_recipe(spec: str | Path, command: str) -> Path:
    """`spec` as a path if it looks like one (exists, has a folder or a .toml suffix), else the shipped recipe
    of that name for `command`'s family; an unknown name is a usage error listing the names there are."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.exists() or "/" in text or path.suffix == ".toml":
        return path
    recipes = list_recipes()
    mine = [r for r in recipes if r.family == family(command) and r.name == text]
    if mine:
        return mine[0].path
    other = [r for r in recipes if r.name == text]
    if other:
        raise VmtUsageError(f"recipe {text!r} is for `vmt {other[0].family}`, not `vmt {command.replace('-', ' ')}`")
    names = ", ".join(r.name for r in recipes if r.family == family(command)) or "none"
    raise VmtUsageError(f"no recipe file or shipped recipe named {text!r}; shipped for this command: {names} "
                        "(see `vmt recipes`)")


def recipe_values(path: Path, command: str, types: Mapping[str, tuple[type, bool]],
                  allowed: Iterable[str]) -> dict[str, Any]:
    """A TOML recipe's values (keys at top level or under a [command] table; [meta] is free text), each in
    its parameter's type (`types`: name -> (base type, is a list), e.g. vmt.runs.fields.value_types of a
    request). Keys may be written with dashes. An unknown key, a value of another type or a table of another
    command is a VmtUsageError naming it."""
    from vmt.runs.fields import convert_value

    allowed = set(allowed)
    if path.is_dir():
        raise VmtUsageError(f"{param('recipe')} {path} is a folder; give a .toml file or a recipe name (see "
                            "`vmt recipes`)")
    if not path.is_file():
        raise VmtUsageError(f"recipe {path} not found; give a .toml file or a recipe name (see `vmt recipes`)")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise VmtUsageError(f"recipe {path} is not valid TOML: {e}") from e
    raw: dict[str, Any] = {}
    for key, val in data.items():
        if isinstance(val, dict):
            if key in ("meta", "about"):
                continue  # free-form description of the recipe
            if key != command:
                raise VmtUsageError(f"recipe {path} has a [{key}] table; this command (vmt {command}) reads "
                                    f"[{command}] or top-level keys")
            raw.update(val)
        else:
            raw[key] = val
    out = {}
    for key, val in raw.items():
        name = key.replace("-", "_")
        if name not in allowed:
            raise VmtUsageError(f"recipe {path}: unknown key {key!r} for `vmt {command}`; known keys: "
                                + ", ".join(sorted(k.replace("_", "-") for k in allowed)))
        try:
            out[name] = convert_value(*types.get(name, (str, False)), val)
        except ValueError as e:
            raise VmtUsageError(f"recipe {path}: {key} = {val!r} is not valid for {param(name)}: expected "
                                f"{e}") from None
    return out


def load_recipe(recipe: str | Path, request: type, command: str | None = None) -> dict[str, Any]:
    """A recipe (a shipped name or a .toml path) as keyword arguments of a run request class, for Python:

        RefineRequest(**load_recipe("wan2.2-a14b-t2v", RefineRequest), prompt="a fox in snow")

    `command`: the recipe table to read (default: the request's command, e.g. "refine")."""
    from dataclasses import fields

    from vmt.runs.fields import value_types

    command = command or request.job_kind.command
    return recipe_values(find_recipe(recipe, command), command, value_types(request),
                         [f.name for f in fields(request)])

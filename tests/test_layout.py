"""The repository layout and what a wheel ships: the recipes stay in the top-level recipes/ folder and install
as the package data of vmt._recipes, and pyproject.toml lists every package (it cannot discover them there)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_top_level_layout():
    for name in ("pyproject.toml", "README.md", "CHANGELOG.md"):
        assert (ROOT / name).is_file(), name
    for name in ("vmt", "cli", "recipes", "tests"):
        assert (ROOT / name).is_dir(), name
    assert not (ROOT / "vmt" / "recipes").exists()  # the finder is vmt/recipes.py, the TOML files live in recipes/


def test_every_package_is_listed_for_the_wheel():
    """Every folder under vmt/ and cli/ with a package's name and files in it (a package, or package data
    such as default_model/) is listed: an unlisted package is left out of the wheel, an unlisted data folder
    makes setuptools warn."""
    listed = set(_setuptools()["packages"])
    found = {".".join(d.relative_to(ROOT).parts) for top in ("vmt", "cli") for d in [ROOT / top, *(ROOT / top).rglob("*")]
             if d.is_dir() and d.name.isidentifier() and d.name != "__pycache__"
             and any(f.is_file() for f in d.iterdir())}
    assert {"vmt", "cli", "vmt.backends"} <= found
    assert found <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(found - listed)}"


def test_recipes_folder_is_the_package_data_of_vmt_recipes():
    tool = _setuptools()
    assert tool["package-dir"] == {"vmt._recipes": "recipes"}
    assert tool["package-data"]["vmt._recipes"] == ["*/*.toml"]
    # a family folder with an importable name is listed as a package (setuptools warns about it otherwise)
    families = {p.name for p in (ROOT / "recipes").iterdir() if p.is_dir()}
    assert {f"vmt._recipes.{f}" for f in families if f.isidentifier()} <= set(tool["packages"])


def test_the_finder_reads_the_top_level_recipes():
    from vmt.recipes import RECIPES_DIR, find_recipe, list_recipes

    assert RECIPES_DIR == ROOT / "recipes"
    assert sorted(r.path for r in list_recipes()) == sorted((ROOT / "recipes").glob("*/*.toml"))
    assert find_recipe("cpu-digits", "longgen-train") == ROOT / "recipes" / "longgen" / "cpu-digits.toml"
    assert find_recipe("vox-8-16", "predict-keypoints-run").parent.name == "predict-keypoints"

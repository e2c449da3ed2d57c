"""The typed run requests (vmt.runs) are the one schema of a run: the command line's options agree with their
fields one by one, a request run from Python writes the same video bytes as the command with the same
options and prints nothing, its errors name parameters, and the README's Python API section runs as written."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from vmt.runs import RefineRequest, TransferRequest

ROOT = Path(__file__).resolve().parents[1]
# Options of the command line only: where to write, how to report, batches. Not part of a run's request.
CLI_ONLY = {"ctx", "output", "recipe", "overwrite", "quiet", "debug", "batch", "seeds", "naming", "dry_run", "format"}
SMALL = dict(num_frames=9, height=32, width=32, steps=2, device="cpu")


def _base(hint) -> tuple[type, bool]:
    """A type hint as (base type, is a list), peeling Optional and Annotated."""
    for _ in range(3):
        origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
        if origin is typing.Annotated:
            hint = args[0]
        elif origin in (typing.Union, types.UnionType) and len(args) == 1:
            hint = args[0]
        elif origin is list:
            return args[0], True
    return hint, False


@pytest.mark.parametrize("command, request_cls", [("refine", RefineRequest), ("transfer", TransferRequest)])
def test_the_command_options_and_the_request_fields_agree_one_by_one(command, request_cls):
    import cli.refine
    import cli.transfer

    fn = {"refine": cli.refine.refine, "transfer": cli.transfer.transfer}[command]
    options = {n: p for n, p in inspect.signature(fn).parameters.items() if n not in CLI_ONLY}
    option_types = typing.get_type_hints(fn, include_extras=False)
    fields = {f.name: f for f in dataclasses.fields(request_cls)}
    field_types = typing.get_type_hints(request_cls)
    assert set(options) == set(fields), (set(options) ^ set(fields))
    for name, f in fields.items():
        default = f.default if f.default is not dataclasses.MISSING else None  # required: None on the CLI
        assert options[name].default == default, (name, options[name].default, default)
        assert _base(option_types[name]) == _base(field_types[name]), (name, option_types[name], field_types[name])
    # The command line checks exactly the ranges the request declares.
    spec = {"refine": cli.refine.SPEC, "transfer": cli.transfer.SPEC}[command]
    from vmt.runs.fields import ranges_of

    assert dict(spec.ranges) == ranges_of(request_cls) and len(spec.ranges) >= 8


@pytest.mark.slow
def test_a_request_run_from_python_writes_the_cli_bytes_and_prints_nothing(tiny_t2v, tmp_path, capfd):
    seen: list[tuple[int, int, dict]] = []
    request = RefineRequest(prompt="a red fox", model=str(tiny_t2v), seed=3, plan="0:2", **SMALL)
    counts = request.run(tmp_path / "api.mp4", progress=lambda d, t, info: seen.append((d, t, info)))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert [(d, t) for d, t, _ in seen] == [(1, 2), (2, 2)] and "sigma" in seen[0][2] and "pnp" in seen[0][2]
    assert counts["nfe"] == 2 + 2 and counts["dit_forward"] == 2 * counts["nfe"]
    res = CliRunner().invoke(app, ["refine", "-p", "a red fox", "--model", str(tiny_t2v), "--seed", "3", "--plan",
                                   "0:2", "--num-frames", "9", "--height", "32", "--width", "32", "--steps", "2",
                                   "--device", "cpu", "-o", str(tmp_path / "cli.mp4"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "api.mp4").read_bytes() == (tmp_path / "cli.mp4").read_bytes()
    api, cli = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("api", "cli"))
    assert api["compute"] == cli["compute"] and api["command"] == ["vmt.RefineRequest.run"]
    assert {k: api["params"][k] for k in ("seed", "plan", "steps")} == {"seed": 3, "plan": "0:2", "steps": 2}
    with pytest.raises(Exception, match="already exists"):  # outputs are never replaced without overwrite
        request.run(tmp_path / "api.mp4")


def test_request_errors_name_parameters_and_the_cli_renders_flags(tiny_t2v, tmp_path):
    from vmt.errors import VmtUsageError

    for bad, text in [(dict(steps=0), "steps must be >= 1, got 0"), (dict(grid="exact"), "grid 'exact': use one of"),
                      (dict(tau=-1.0), "tau must be >= 0"), (dict(seed=-1), "seed must be >= 0")]:
        with pytest.raises(VmtUsageError) as e:
            RefineRequest(prompt="x", **bad).check()
        assert text in str(e.value) and "--" not in str(e.value), str(e.value)
    with pytest.raises(VmtUsageError, match="tile '3by4' must look like 3x4") as e:
        TransferRequest(reference=tmp_path / "r.mp4", prompt="x", tile="3by4").check()
    assert "--" not in str(e.value)
    res = CliRunner().invoke(app, ["refine", "-p", "x", "--grid", "exact", "-o", str(tmp_path / "o.mp4"),
                                   "--model", str(tiny_t2v)])
    assert res.exit_code == 2 and "--grid 'exact': use one of" in res.stderr


def _python_blocks(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.mark.slow
def test_the_readme_python_api_runs_as_written(tmp_path):
    """The README's code, unchanged, on a tiny random-weight Wan served from a hub cache under the real id
    (15 blocks, so the published capture block 14 exists), offline."""
    from vmt.testing.tiny_wan import save_tiny_wan

    blocks = _python_blocks("Python API")
    assert len(blocks) == 5
    cache = tmp_path / "hub"
    commit = "0" * 40
    # 20 blocks in the I2V model: the recipe's capture block 19 of the transfer onto a photo
    for name, kind, layers in (("Wan2.1-T2V-1.3B-Diffusers", "t2v", 15), ("Wan2.1-I2V-14B-480P-Diffusers", "i2v-clip", 20)):
        repo = cache / f"models--Wan-AI--{name}"
        save_tiny_wan(repo / "snapshots" / commit, kind, num_layers=layers)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    work = tmp_path / "work"
    work.mkdir()
    import numpy as np
    from PIL import Image

    from tests.conftest import moving_pattern

    Image.fromarray(moving_pattern(1, 150, 200, seed=3)[0]).save(work / "dog.jpg")  # the photo of a block
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 224, 3), dtype=np.uint8)).save(work / "first.png")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    # One interpreter runs the blocks one after another, each in a namespace of its own as a script would
    # (the imports are paid once); a marker line separates what each printed.
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    driver = ("import json, sys\n"
              f"for i, block in enumerate(json.load(open({str(tmp_path / 'blocks.json')!r}))):\n"
              "    print('=== block', i, flush=True)\n"
              "    exec(compile(block, f'<README block {i}>', 'exec'), {'__name__': '__main__'})\n")
    res = subprocess.run([sys.executable, "-c", driver], cwd=work, env=env, capture_output=True, text=True,
                         timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    outputs = [part.split("\n", 1)[1] if "\n" in part else "" for part in res.stdout.split("=== block ")[1:]]
    assert len(outputs) == len(blocks)
    assert sorted(p.name for p in work.iterdir()) == sorted(
        [f"{n}.{x}" for n in ("fox", "boat", "fox-0", "fox-1", "wolf", "dog", "long") for x in ("mp4", "json")]
        + ["dog.jpg", "first.png"])  # the chain's run folder is gone once its video is written
    assert outputs[4].splitlines() == ["4", "33 4"]
    # What the comments say it prints.
    assert outputs[0].strip() == "{'nfe': 41, 'dit_forward': 82, 'dit_backward': 0}"
    lines = outputs[1].splitlines()
    assert lines[0].startswith("step 1/8 {'sigma': ") and lines[7].startswith("step 8/8")
    assert lines[-1] == "steps must be >= 1, got 0"
    wolf = json.loads((work / "wolf.json").read_text())
    # 2 guided steps, each 3 inner steps with the gradient recomputed every 3rd: one backward per guided step.
    assert wolf["model"]["revision"] == commit and wolf["compute"]["dit_backward"] == 2
    assert wolf["reference"]["path"] == "fox-0.mp4" and len(wolf["guidance"]["steps"]) == 2
    dog = json.loads((work / "dog.json").read_text())
    assert dog["image"]["fit"] == "crop" and dog["image"]["size"] == [150, 200]
    assert dog["model"]["pipeline"] == "WanImageToVideoPipeline"
    shutil.rmtree(cache)


def test_a_recipe_loads_into_a_request_from_python(tmp_path):
    """vmt.recipes.load_recipe: the shipped recipe's values, typed as the request's fields, read independently
    here with tomllib; a bad recipe names the parameter, not a flag."""
    import tomllib

    from vmt.errors import VmtUsageError
    from vmt.recipes import find_recipe, load_recipe

    values = load_recipe("wan2.2-a14b-t2v", RefineRequest)
    data = tomllib.loads(find_recipe("wan2.2-a14b-t2v", "refine").read_text())
    flat = {k.replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}
    flat.update({k.replace("-", "_"): v for k, v in data.get("refine", {}).items()})
    assert values == {k: float(v) if isinstance(RefineRequest.__dataclass_fields__[k].default, float)
                      and isinstance(v, int) else v for k, v in flat.items()}
    request = RefineRequest(**values, prompt="a fox")
    assert all(getattr(request, k) == v for k, v in values.items())
    request.check()  # the recipe's values are valid for the request
    bad = tmp_path / "bad.toml"
    bad.write_text("guidance_scale = 'high'\n")
    with pytest.raises(VmtUsageError) as e:
        load_recipe(bad, RefineRequest)
    assert "guidance_scale = 'high' is not valid for guidance_scale: expected a number" in str(e.value)
    assert "--" not in str(e.value)


@pytest.mark.parametrize("family, request_class", [("refine", RefineRequest), ("transfer", TransferRequest)])
def test_every_shipped_recipe_makes_a_valid_request(family, request_class):
    """Each shipped refine and transfer recipe, read by vmt.recipes.load_recipe, gives a request that passes
    its own checks (no model): a recipe with a key, value or range the request refuses fails here."""
    from vmt.recipes import list_recipes, load_recipe

    names = [r.name for r in list_recipes() if r.family == family]
    assert names
    for name in names:
        values = load_recipe(name, request_class)
        required = {"prompt": "x"} if family == "refine" else {"prompt": "x", "reference": "ref.mp4"}
        request = request_class(**{**required, **values})
        request.check()

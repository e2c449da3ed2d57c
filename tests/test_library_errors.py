"""The library names parameters, never command-line flags (vmt.errors.param): a Python caller reads
`tolerance 'x' is not NAME=VALUE`, the command line shows the same error with the command's own flag."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from vmt.errors import VmtUsageError

ROOT = Path(__file__).resolve().parents[1]

# Not the library's messages: helpers for the tests.
SKIPPED = ("vmt/testing/",)

# Modules left out of the check while their messages move to param(): none now, every module of vmt/ is
# checked. A module added here must exist (test_excluded_modules_exist) and is what remains to convert.
EXCLUDED: tuple[str, ...] = ()

# A flag: one or two dashes, then a lowercase letter (`--overwrite`, `-o`, `--render-samples`), not inside a
# word (`non-zero`, `4k+1`), not a negative number (`-1`). A replacement field of an f-string reads as FIELD
# (below): `{n}-frame` is no flag (the dash follows the field), `--{name}` is one (a flag made at run time).
FIELD = "\x00"
FLAG = re.compile(rf"(?<![\w{FIELD}])(?:--?[a-z][a-z0-9-]*|--{FIELD})")
# A command example a user copies: backticks around a whole `vmt ...` command line, flags included.
COMMAND_EXAMPLE = re.compile(r"`vmt [^`]*`")


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the docstring nodes: a string that is the first statement of a module, class or function."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def _ffmpeg_argv(tree: ast.AST) -> set[int]:
    """ids of strings that are ffmpeg's own options, not text for a user: the items of a list literal that
    starts with a call of `ffmpeg_exe` (an argument vector) and the arguments of `.global_args(...)`
    (ffmpeg-python's way to add ffmpeg options)."""
    out = set()
    for node in ast.walk(tree):
        items = []
        if isinstance(node, ast.List) and node.elts and isinstance(node.elts[0], ast.Call) \
                and getattr(node.elts[0].func, "id", None) == "ffmpeg_exe":
            items = node.elts
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "global_args":
            items = node.args
        out.update(id(x) for x in items if isinstance(x, ast.Constant))
    return out


def _text(node: ast.JoinedStr) -> str:
    """An f-string's constant parts, each replacement field read as FIELD."""
    return "".join(v.value if isinstance(v, ast.Constant) else FIELD for v in node.values)


def flag_offenders(source: str, name: str = "<source>") -> list[str]:
    """`name:line: flag in text` for every string that names a command-line flag.

    Looked at: every string constant and every f-string (its constant parts, replacement fields as FIELD) of
    the source. Not looked at: docstrings (the first statement of a module, class or function, which document
    command-line behaviour too) and ffmpeg's argument vectors (`_ffmpeg_argv`). Allowed in a string: a flag
    inside a backticked command example that starts with `vmt ` (`vmt longgen train DATA -o RUN_DIR`); any
    other flag is an offender, backticked or not (`--overwrite`): the library writes `param("overwrite")`.
    """
    tree = ast.parse(source)
    skip = _docstrings(tree) | _ffmpeg_argv(tree)
    # The parts of an f-string (and of its format specs) are read with the f-string, not on their own.
    inside = {id(c) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
              for c in ast.walk(node) if c is not node}
    out = []
    for node in ast.walk(tree):
        if id(node) in inside:
            continue
        if isinstance(node, ast.JoinedStr):
            text = _text(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            text = node.value
        else:
            continue
        for m in FLAG.finditer(COMMAND_EXAMPLE.sub("", text)):
            out.append(f"{name}:{node.lineno}: {m.group().replace(FIELD, '{...}')} in {text[:80]!r}")
    return sorted(set(out), key=lambda s: (s.split(":")[0], int(s.split(":")[1])))


def library_modules() -> list[Path]:
    rel = lambda p: p.relative_to(ROOT).as_posix()
    return sorted(p for p in (ROOT / "vmt").rglob("*.py")
                  if not rel(p).startswith(SKIPPED) and not rel(p).startswith(EXCLUDED))


def test_the_flag_check_finds_flags_and_only_flags():
    source = '''
"""Module docstring: --anything goes here."""
import subprocess


def f(n, name, path):
    """A function's docstring may name --overwrite and -o."""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", path, "-y"])
    ok = [
        f"{param('overwrite')} to replace it",
        f"{n}-frame clips; use -1 (the last frame)",
        "non-zero, 4k+1, e.g. -0.5",
        f"train one with `vmt longgen train DATA -o {path}`",
        f"regenerate it with `vmt eval {name} ... --json {path}`",
    ]
    bad = [
        "pass --overwrite to replace it",
        "start a new -o folder",
        f"--{name} is wrong",
        f"{path}: shorten --context/--horizon",
        "`--json FILE` is not a command example",
        "e.g. vmt longgen train DATA -o RUN_DIR, without backticks",
        ["ls", "-l"],
    ]
    return ok, bad


class C:
    """A class docstring: --flag."""
'''
    found = flag_offenders(source, "x.py")
    lines = source.splitlines()
    first_bad = next(i for i, ln in enumerate(lines, start=1) if "bad = [" in ln) + 1
    assert sorted({int(s.split(":")[1]) for s in found}) == list(range(first_bad, first_bad + 7)), found
    assert any("--{...}" in s for s in found), found  # a flag made at run time reads as one


def test_excluded_modules_exist():
    for entry in (*SKIPPED, *EXCLUDED):
        assert (ROOT / entry).exists(), f"{entry} is listed but does not exist; drop it from the list"


def test_library_messages_name_parameters_not_flags():
    """No string of the library outside docstrings names a flag (the rule: `flag_offenders`), in any module of
    vmt/ (EXCLUDED, the modules still to convert, is empty)."""
    offenders = [o for p in library_modules()
                 for o in flag_offenders(p.read_text(encoding="utf-8"), p.relative_to(ROOT).as_posix())]
    assert not offenders, ("strings naming command-line flags (write param('name') in messages; see "
                           "vmt/errors.py):\n" + "\n".join(offenders))


# ---------------------------------------------------------------- one error, two readers


def _one_line(output: str) -> str:
    return " ".join(output.split())


def _keypoint_files(folder: Path) -> tuple[Path, Path]:
    """A truth file (one 10-frame sequence of 2 keypoints) and a 2-sample backtest forecast of it."""
    from vmt.keypoints.data import Layout, save_predictions, save_sequences

    rng = np.random.default_rng(0)
    truth, pred = folder / "truth.npz", folder / "pred.npz"
    save_sequences(truth, ["a"], [rng.random((10, 2, 2))])
    save_predictions(pred, ["a"], rng.random((1, 2, 3, 4)), Layout(2, False), context=7, horizon=3,
                     start=np.asarray([7]))
    return truth, pred


def test_a_bad_value_names_the_parameter_in_python_and_the_flag_on_the_command_line(tmp_path):
    from vmt.metrics.forecast import evaluate_forecasts
    from vmt.metrics.report import parse_tolerances

    truth, pred = _keypoint_files(tmp_path)
    runner = CliRunner()

    with pytest.raises(VmtUsageError) as e:
        parse_tolerances(["fvd"])
    assert str(e.value).startswith("tolerance 'fvd' is not NAME=VALUE") and "--" not in str(e.value)
    assert e.value.params == ["tolerance"]
    # Given as -t, written back as the command's long flag.
    r = runner.invoke(app, ["eval", "keypoints", str(truth), str(pred), "-t", "fvd"])
    assert r.exit_code == 2, r.output
    assert "--tolerance 'fvd' is not NAME=VALUE" in _one_line(r.output)

    with pytest.raises(VmtUsageError) as e:
        evaluate_forecasts(truth, pred, k=9)
    assert str(e.value) == "k must be between 1 and the 2 samples, got 9"
    r = runner.invoke(app, ["eval", "keypoints", str(truth), str(pred), "--k", "9"])
    assert r.exit_code == 2, r.output
    assert "--k must be between 1 and the 2 samples, got 9" in _one_line(r.output)


def test_a_note_names_the_parameter_in_python_and_renders_flags_for_the_command_line():
    """A note that is no error (a window clamped to the token grid) is a str with the parameter's name; the
    command line writes it with the flag (cli.scaffold.note_text)."""
    from cli.scaffold import note_text
    from vmt.errors import Note
    from vmt.motion.guidance import GuidanceConfig

    cfg, notes = GuidanceConfig(window=21, tile=(3, 4)).fit_grid((2, 2, 3))
    assert (cfg.window, cfg.tile) == (2, (2, 3))
    assert [type(n) for n in notes] == [Note, Note]
    assert notes[0] == "window 21 is larger than the 2x3 token grid; using 2"
    assert notes[1] == "tile 3x4 is larger than the 2x3 token grid; using 2x3"
    assert note_text(notes[0]) == "--window 21 is larger than the 2x3 token grid; using 2"
    joined = Note("; ".join(n.message for n in notes))
    assert note_text(joined).count("--") == 2 and str(joined) == "; ".join(notes)
    assert note_text("plain text") == "plain text"

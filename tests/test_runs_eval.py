"""The `vmt eval` requests (vmt.runs.eval): their fields are the subcommands' options one by one, a request
run from Python writes the report the command writes with the same options (timings and the command line
apart) and prints nothing, progress goes to the callback, check() refuses bad values naming parameters, and
the gate's outcome is the result's. Every test runs the real metrics on small files it writes."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing

import numpy as np
import pytest
from typer.testing import CliRunner

import cli.eval as eval_cli
from cli.main import app
from tests.test_eval_cli import _save_mean_detector, translating
from tests.test_eval_gate import chain
from vmt.errors import VmtError, VmtUsageError
from vmt.io.video import write_video
from vmt.runs.eval import (
    FidRequest,
    FvdRequest,
    KeypointsEvalRequest,
    MotionEvalRequest,
    PhysicsEvalRequest,
    SeamsEvalRequest,
    TemporalEvalRequest,
    expand_inputs,
)
from vmt.runs.fields import ranges_of

cv2 = pytest.importorskip("cv2")
runner = CliRunner()

COMMANDS = {"fvd": FvdRequest, "fid": FidRequest, "motion": MotionEvalRequest, "temporal": TemporalEvalRequest,
            "physics": PhysicsEvalRequest, "keypoints": KeypointsEvalRequest, "seams": SeamsEvalRequest}
# Not compared between a Python and a command-line report: when and how long, the command line, and the
# parameters only one side has (--quiet) or gives another value (each writes its own json_out).
VOLATILE = ("created", "command", "timings_s")


def _base(hint) -> tuple[type, bool]:
    for _ in range(3):
        origin, args = typing.get_origin(hint), [a for a in typing.get_args(hint) if a is not type(None)]
        if origin in (typing.Union, __import__("types").UnionType) and len(args) == 1:
            hint = args[0]
        elif origin is list:
            return args[0], True
    return hint, False


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_subcommand_options_and_the_request_fields_agree_one_by_one(name):
    cls = COMMANDS[name]
    fn = getattr(eval_cli, name)
    options = {n: p for n, p in inspect.signature(fn).parameters.items() if n not in ("ctx", "quiet")}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(options) == set(fields), set(options) ^ set(fields)
    option_types, field_types = typing.get_type_hints(fn), typing.get_type_hints(cls)
    for n, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        assert (options[n].default is inspect.Parameter.empty) == required, n
        if not required:
            assert options[n].default == f.default, (n, options[n].default, f.default)
        assert _base(option_types[n]) == _base(field_types[n]), (n, option_types[n], field_types[n])
    spec = getattr(eval_cli, f"{name.upper()}_SPEC")
    assert dict(spec.ranges) == ranges_of(cls)


# ---------------------------------------------------------------- Python and command line: the same report


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from vmt.keypoints.data import save_sequences

    d = tmp_path_factory.mktemp("eval_inputs")
    (d / "v").mkdir()
    write_video(d / "v" / "a.mp4", translating(1, 0, t=6, h=48, w=48), 10)
    write_video(d / "v" / "b.mp4", translating(2, 1, t=6, h=48, w=48, seed=3), 10)
    (d / "v" / "broken.mp4").write_bytes(b"not a video")
    write_video(d / "ref.mp4", translating(2, 1, t=6, h=48, w=48, seed=5), 10)
    write_video(d / "chain.mp4", chain(4, 40), 10)
    rng = np.random.default_rng(1)
    seqs = [np.cumsum(rng.normal(size=(14, 3, 2)), axis=0) for _ in range(3)]
    save_sequences(d / "truth.npz", ["a", "b", "c"], seqs)
    np.savez(d / "pred.npz", names=np.array(["a", "b", "c"]), start=np.array([9] * 3),
             value=np.stack([s[None, None, 8] + rng.normal(size=(4, 5, 3, 2)) for s in seqs]))
    _save_mean_detector(d / "i3d.pt")
    _save_const_inception(d / "inception.pt")
    return d


def _save_const_inception(path):
    import torch

    class ConstInception(torch.nn.Module):
        """Features: per-channel mean and std of each frame; probabilities: uniform over 2 classes."""

        def forward(self, x: torch.Tensor, return_features: bool = False,
                    no_output_bias: bool = False) -> torch.Tensor:
            if return_features:
                return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1)
            return torch.full((x.shape[0], 2), 0.5)

    torch.jit.script(ConstInception()).save(str(path))


def _cases(d):
    """subcommand -> (request arguments, the same as command-line arguments)."""
    v = str(d / "v")
    return {
        "temporal": (dict(videos=[v], flow_preset="fast", skip_bad=True), [v, "--flow-preset", "fast", "--skip-bad"]),
        "seams": (dict(videos=[str(d / "chain.mp4")], clip_length=4), [d / "chain.mp4", "--clip-length", "4"]),
        "physics": (dict(videos=[str(d / "v" / "a.mp4")], threshold=30.0), [d / "v" / "a.mp4", "--threshold", "30"]),
        "motion": (dict(ref=str(d / "ref.mp4"), gen=str(d / "v" / "*.mp4"), grid=12, skip_bad=True),
                   [d / "ref.mp4", str(d / "v" / "*.mp4"), "--grid", "12", "--skip-bad"]),
        "keypoints": (dict(truth=d / "truth.npz", pred=d / "pred.npz", k=2),
                      [d / "truth.npz", d / "pred.npz", "--k", "2"]),
        "fvd": (dict(real=v, gen=str(d / "v" / "[ab].mp4"), i3d=d / "i3d.pt", size=32, num_frames=4, device="cpu",
                     skip_bad=True),
                [v, str(d / "v" / "[ab].mp4"), "--i3d", d / "i3d.pt", "--size", "32", "--num-frames", "4",
                 "--device", "cpu", "--skip-bad"]),
        "fid": (dict(real=str(d / "v" / "a.mp4"), gen=str(d / "v" / "b.mp4"), inception=d / "inception.pt",
                     inception_score=True, stride=2, device="cpu"),
                [d / "v" / "a.mp4", d / "v" / "b.mp4", "--inception", d / "inception.pt", "--is", "--stride", "2",
                 "--device", "cpu"]),
    }


def _comparable(report: dict) -> dict:
    out = {k: v for k, v in report.items() if k not in VOLATILE}
    out["params"] = {k: v for k, v in report["params"].items() if k not in ("quiet", "json_out")}
    # ffmpeg's messages name its context by memory address ("[in#0 @ 0x55c5...]"), different in every process
    out["errors"] = [dict(e, error=re.sub(r"0x[0-9a-f]+", "0x", e["error"])) for e in report["errors"]]
    return out


@pytest.mark.parametrize("name", ["temporal", "seams", "physics", "motion", "keypoints", "fvd", "fid"])
def test_a_request_run_from_python_writes_the_cli_report_and_prints_nothing(files, tmp_path, capfd, name):
    kwargs, argv = _cases(files)[name]
    seen: list[tuple[int, int, dict]] = []
    request = COMMANDS[name](**kwargs, json_out=tmp_path / "api.json")
    total = request.check().total
    result = request.run(progress=lambda d, t, info: seen.append((d, t, info)))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    r = runner.invoke(app, ["eval", name, *map(str, argv), "--json", str(tmp_path / "cli.json"), "-q"])
    assert r.exit_code == 0, r.output
    api, cli = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("api", "cli"))
    assert _comparable(api) == _comparable(cli)
    assert api["params"]["json_out"] == str(tmp_path / "api.json") and "quiet" not in api["params"]
    assert json.loads(json.dumps(result.report, default=str)) == api  # the result holds what was written
    assert result.outcome == "no baseline" and result.written == tmp_path / "api.json"
    if name == "keypoints":
        assert seen == []  # one pair of files, no per-input steps
    else:
        assert [(d, t) for d, t, _ in seen] == [(i + 1, total) for i in range(total)]
        assert all("file" in info for _, _, info in seen)
    if name == "fvd":  # the real set, then the generated set, counted as one run
        assert [info["set"] for _, _, info in seen] == ["real"] * 3 + ["gen"] * 2
        assert api["metrics"]["fvd"]["value"] is not None and api["params"]["detector"] == str(files / "i3d.pt")
    if name == "fid":
        assert api["metrics"]["is"]["value"] == pytest.approx(1.0) and api["metrics"]["n_gen_frames"]["value"] == 3
    if name in ("temporal", "motion", "fvd"):  # the broken file is a reported error, accepted by skip_bad
        assert [e["path"] for e in api["errors"]] == [str(files / "v" / "broken.mp4")]


# ---------------------------------------------------------------- checks name parameters


@pytest.mark.parametrize("make, names, text", [
    (lambda d: TemporalEvalRequest([str(d / "v")], flow_preset="slow"), ["flow_preset"], "use one of"),
    (lambda d: TemporalEvalRequest([str(d / "v")], max_frames=1), ["max_frames"], ">= 2"),
    (lambda d: MotionEvalRequest(ref=str(d / "ref.mp4"), gen=str(d / "ref.mp4"), grid=1), ["grid"], ">= 2"),
    (lambda d: MotionEvalRequest(ref=str(d / "ref.mp4")), ["ref", "gen", "batch"], "give ref and gen"),
    (lambda d: PhysicsEvalRequest([str(d / "v")], threshold=300.0), ["threshold"], "<= 255"),
    (lambda d: SeamsEvalRequest([str(d / "chain.mp4")]), ["clip_length"], "is required"),
    (lambda d: FvdRequest(str(d / "v"), str(d / "v"), clips="some"), ["clips"], "use one of"),
    (lambda d: FidRequest(str(d / "v"), str(d / "v"), stride=0), ["stride"], ">= 1"),
    (lambda d: KeypointsEvalRequest(d / "truth.npz", d / "missing.npz"), ["pred"], "not found"),
    (lambda d: KeypointsEvalRequest(d / "truth.npz", d / "pred.npz", k=0), ["k"], ">= 1"),
    (lambda d: SeamsEvalRequest([str(d / "chain.mp4")], clip_length=4, tolerance=["seam_score=1"]),
     ["tolerance", "baseline", "json_out"], "needs baseline FILE"),
    (lambda d: SeamsEvalRequest([str(d / "chain.mp4")], clip_length=4, json_out=d / "chain.mp4"),
     ["json_out", "videos"], "is the same file as the input videos"),
])
def test_check_refuses_bad_values_naming_the_parameter(files, make, names, text):
    with pytest.raises(VmtUsageError) as e:
        make(files).check()
    assert e.value.params == names and text in str(e.value), str(e.value)
    assert "--" not in str(e.value)


def test_inputs_expand_from_folders_and_globs_without_hidden_files(files, tmp_path):
    (tmp_path / ".a.x.part.mp4").write_bytes((files / "v" / "a.mp4").read_bytes())
    (tmp_path / "c.mp4").write_bytes((files / "v" / "a.mp4").read_bytes())
    assert expand_inputs(files / "v") == [files / "v" / n for n in ("a.mp4", "b.mp4", "broken.mp4")]
    assert expand_inputs(str(tmp_path / "*.mp4")) == [tmp_path / "c.mp4"]
    assert expand_inputs(tmp_path / ".a.x.part.mp4") == [tmp_path / ".a.x.part.mp4"]  # named: taken as it is
    with pytest.raises(VmtUsageError, match="no files match"):
        expand_inputs(str(tmp_path / ".*"))


# ---------------------------------------------------------------- outcomes and failures


def test_the_gate_outcome_is_the_result_and_the_view_says_it(files, tmp_path, capfd):
    video = str(files / "chain.mp4")
    base = SeamsEvalRequest([video], clip_length=3, json_out=tmp_path / "base.json").run()
    assert base.outcome == "no baseline" and base.view(quiet=True) == [("no baseline", base.message)]
    assert "give baseline FILE" in base.message  # parameters by name in Python
    same = SeamsEvalRequest([video], clip_length=3, baseline=tmp_path / "base.json").run()
    assert same.outcome == "pass" and "1 baseline checks ok" in same.message
    assert [c.name for c in same.checks] == ["seam_score"] and same.report["baseline"]["regressions"] == []
    # the same video cut at its real seams: refused as another parameter, then gated when allowed (a seam
    # score of 10 is further from 1 than the baseline's, whose cuts fell inside the clips)
    with pytest.raises(VmtUsageError, match="parameters differ: clip_length") as e:
        SeamsEvalRequest([video], clip_length=4, baseline=tmp_path / "base.json").run()
    assert e.value.params == ["allow_different_inputs"]
    other = SeamsEvalRequest([video], clip_length=4, baseline=tmp_path / "base.json",
                             allow_different_inputs=True).run()
    assert other.outcome == "regression" and "seam_score (further from 1" in other.message
    kinds = [k for k, _ in other.view()]
    assert kinds[:2] == ["table", "table"] and "warning" in kinds and kinds[-1] == "regression"
    failed = TemporalEvalRequest([str(files / "v")], flow_preset="fast").run()
    assert failed.outcome == "error" and "pass skip_bad" in failed.message
    assert ("failed", "1 input(s) failed:") in failed.view(quiet=True)
    assert capfd.readouterr() == ("", "")


def test_json_out_dash_writes_the_report_to_standard_output(files, capsys):
    result = SeamsEvalRequest([str(files / "chain.mp4")], clip_length=4, json_out="-").run()
    out, err = capsys.readouterr()
    assert json.loads(out)["metrics"] == result.report["metrics"] and err == "" and result.written is None


def test_an_unexpected_failure_is_a_vmt_error_with_its_cause_unless_debug(files, tmp_path):
    """A report folder that disappears between check() and the write: FileNotFoundError from the write,
    raised as a VmtError (the command line: exit 3, one line), or as it is with debug."""
    for debug in (False, True):
        folder = tmp_path / f"reports{debug}"
        folder.mkdir()
        request = SeamsEvalRequest([str(files / "chain.mp4")], clip_length=4, json_out=folder / "r.json",
                                   debug=debug)
        plan = request.check()
        folder.rmdir()
        if debug:
            with pytest.raises(FileNotFoundError):
                request.run(plan)
        else:
            with pytest.raises(VmtError) as e:
                request.run(plan)
            assert not isinstance(e.value, VmtUsageError) and isinstance(e.value.__cause__, FileNotFoundError)
            assert str(e.value).startswith("FileNotFoundError: ") and e.value.params == ["debug"]

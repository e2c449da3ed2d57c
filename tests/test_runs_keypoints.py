"""KeypointsTrainRequest and KeypointsRunRequest (vmt.runs.keypoints): the options of `vmt predict-keypoints
train|run` agree with their fields one by one, a request run from Python writes what the command writes with
the same options and prints nothing, its progress callback is called, and its errors name parameters."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.test_keypoints_cli import _kp_file
from tests.test_run_requests import CLI_ONLY, _base
from vmt.errors import VmtUsageError
from vmt.runs.keypoints import KeypointsRunRequest, KeypointsTrainRequest

runner = CliRunner()
TINY = dict(context=4, horizon=3, steps=12, eval_every=6, hidden=8, layers=1, flow_hidden=8, blocks=2, cond_dim=2,
            batch=16, val_identities="id1", device="cpu")
# What differs between two identical runs: the clock, and how they were asked for.
VOLATILE = {"created", "timings_s", "command", "memory", "train_seconds"}


def _flags(values: dict) -> list[str]:
    return [x for k, v in values.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def _same_doc(a: dict, b: dict) -> dict:
    """The parts of two sidecars that must agree (the CLI's params also hold its own options)."""
    assert {k: v for k, v in a.items() if k not in VOLATILE | {"params", "output"}} == \
        {k: v for k, v in b.items() if k not in VOLATILE | {"params", "output"}}
    shared = set(a["params"]) & set(b["params"]) - {"output"}
    assert {k: a["params"][k] for k in shared} == {k: b["params"][k] for k in shared}
    return shared


@pytest.mark.parametrize("command, request_cls", [("train", KeypointsTrainRequest), ("run", KeypointsRunRequest)])
def test_the_command_options_and_the_request_fields_agree_one_by_one(command, request_cls):
    import cli.keypoints

    fn = {"train": cli.keypoints.train, "run": cli.keypoints.run}[command]
    # --batch is a forward batch size here, not a job file: a field like any other.
    options = {n: p for n, p in inspect.signature(fn).parameters.items() if n not in CLI_ONLY - {"batch"}}
    option_types = typing.get_type_hints(fn)
    fields = {f.name: f for f in dataclasses.fields(request_cls)}
    field_types = typing.get_type_hints(request_cls)
    assert set(options) == set(fields), set(options) ^ set(fields)
    for name, f in fields.items():
        cli_default = None if options[name].default is inspect.Parameter.empty else options[name].default
        assert cli_default == f.default, (name, cli_default, f.default)
        assert _base(option_types[name]) == _base(field_types[name]), name
    spec = {"train": cli.keypoints.TRAIN_SPEC, "run": cli.keypoints.RUN_SPEC}[command]
    from vmt.runs.fields import ranges_of

    assert dict(spec.ranges) == ranges_of(request_cls) and len(spec.ranges) >= 7


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same tiny model trained twice: by the command, and from Python (output captured)."""
    d = tmp_path_factory.mktemp("kpruns")
    data = _kp_file(d / "kp.npz")
    res = runner.invoke(app, ["predict-keypoints", "train", str(data), "-o", str(d / "cli_model"), *_flags(TINY),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    seen: list = []
    result = KeypointsTrainRequest(data=data, **TINY).run(d / "api_model", progress=lambda *a: seen.append(a))
    return d, result, seen


@pytest.mark.slow
def test_train_from_python_writes_the_cli_model_and_reports_progress(trained):
    from safetensors.numpy import load_file

    d, result, seen = trained
    assert [(done, total) for done, total, _ in seen] == [(i, 12) for i in range(1, 13)]
    assert seen[5][2]["step"] == "6" and seen[5][2]["val_nll"] != "-" and seen[0][2]["val_nll"] == "-"
    assert result["train_windows"] > 0 and result["layout"] and result["best_val_nll"] is not None
    for name in ("model.safetensors", "last.safetensors"):
        api, cli = load_file(d / "api_model" / name), load_file(d / "cli_model" / name)
        assert api.keys() == cli.keys() and all(np.array_equal(api[k], cli[k]) for k in api)
    api_cfg, cli_cfg = (json.loads((d / m / "config.json").read_text()) for m in ("api_model", "cli_model"))
    assert api_cfg["config"] == cli_cfg["config"] and api_cfg["history"] == cli_cfg["history"]
    assert api_cfg["data"] == {**cli_cfg["data"], "file": api_cfg["data"]["file"]}
    api, cli = (json.loads((d / m / "train.json").read_text()) for m in ("api_model", "cli_model"))
    shared = _same_doc(api, cli)
    assert {"steps", "context", "val_identities", "param", "seed"} <= shared
    assert api["command"] == ["vmt.KeypointsTrainRequest.run"] and cli["command"][0] == "vmt"
    assert api["history"] == result["history"] and api["params"]["output"] == str(d / "api_model")


@pytest.mark.slow
def test_train_prints_nothing(trained, tmp_path, capfd):
    d, _, _ = trained
    capfd.readouterr()
    KeypointsTrainRequest(data=d / "kp.npz", **{**TINY, "steps": 2, "eval_every": 1}).run(tmp_path / "m")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert (tmp_path / "m" / "model.safetensors").is_file() and (tmp_path / "m" / "train.json").is_file()


def test_train_check_names_parameters(tmp_path):
    data = _kp_file(tmp_path / "kp.npz")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")   # a run folder: check() reads no model
    for bad, text in [(dict(steps=0), "steps must be >= 1, got 0"), (dict(param="flat"), "param 'flat': use one of"),
                      (dict(dropout=1.0), "dropout must be >= 0 and < 1"), (dict(context=1), "context must be >= 2"),
                      (dict(data=None), "data is missing"), (dict(data=tmp_path / "no.npz"), "data "),
                      (dict(fomm=tmp_path), "fomm")]:
        with pytest.raises(VmtUsageError) as e:
            KeypointsTrainRequest(**{"data": data, **bad}).check()
        assert text in str(e.value) and "--" not in str(e.value), str(e.value)
    for kwargs, text in [(dict(), "pass resume to continue it or overwrite"), (dict(resume=True), None)]:
        req = KeypointsTrainRequest(data=data, **kwargs)
        if text is None:
            req.check(run)          # a run to resume: accepted
            continue
        with pytest.raises(VmtUsageError, match=text) as e:
            req.check(run)
        assert "--" not in str(e.value)
    with pytest.raises(VmtUsageError, match="resume: .* holds no model") as e:
        KeypointsTrainRequest(data=data, resume=True).check(tmp_path / "new")
    # The command line renders the same errors with its flags.
    res = runner.invoke(app, ["predict-keypoints", "train", str(data), "-o", str(tmp_path / "x"), "--param", "flat"])
    assert res.exit_code == 2 and "--param 'flat': use one of" in " ".join(res.output.split())


@pytest.mark.slow
def test_run_from_python_writes_the_cli_forecast_and_prints_nothing(trained, tmp_path, capfd):
    d, _, _ = trained
    opts = dict(samples=4, horizon=4, seed=3, batch=4, mcmc_steps=1, device="cpu")
    res = runner.invoke(app, ["predict-keypoints", "run", str(d / "kp.npz"), "-m", str(d / "cli_model"),
                              *_flags(opts), "-o", str(tmp_path / "cli.npz"), "--quiet"])
    assert res.exit_code == 0, res.output
    seen: list = []
    capfd.readouterr()
    request = KeypointsRunRequest(input=d / "kp.npz", model=d / "cli_model", **opts)
    result = request.run(tmp_path / "api.npz", progress=lambda *a: seen.append(a))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert [(done, total) for done, total, _ in seen] == [(4, 6), (6, 6)] and seen[-1][2] == {"sequences": "6/6"}
    assert result == {"sequences": 6, "samples": 4, "horizon": 4, "method": "GRU-SNF", "keypoints_file": None,
                      "render": None}
    api, cli = np.load(tmp_path / "api.npz"), np.load(tmp_path / "cli.npz")
    assert api.files == cli.files and all(np.array_equal(api[k], cli[k]) for k in api.files)
    api_doc, cli_doc = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("api", "cli"))
    for doc in (api_doc, cli_doc):
        doc["compute"].pop("ms_per_predicted_frame")
    shared = _same_doc(api_doc, cli_doc)
    assert {"samples", "horizon", "context", "model", "seed", "acceptance"} <= shared
    assert api_doc["params"]["context"] == 4 and api_doc["command"] == ["vmt.KeypointsRunRequest.run"]
    with pytest.raises(VmtUsageError, match="already exists"):       # never replaced without overwrite
        request.run(tmp_path / "api.npz")
    request.run(tmp_path / "api.npz", overwrite=True)
    assert np.array_equal(np.load(tmp_path / "api.npz")["value"], cli["value"])


@pytest.mark.slow
def test_run_from_python_renders_the_cli_preview(trained, tmp_path):
    pytest.importorskip("cv2")
    from tests.conftest import moving_pattern
    from vmt.io.video import write_video

    d, _, _ = trained
    clip = tmp_path / "clip.mp4"
    write_video(clip, moving_pattern(6, 48, 48, seed=1), fps=10)
    opts = dict(samples=3, seed=1, refine=False, device="cpu")
    res = runner.invoke(app, ["predict-keypoints", "run", str(d / "kp.npz"), "-m", str(d / "cli_model"), "--samples",
                              "3", "--seed", "1", "--no-refine", "--device", "cpu", "--source", str(clip),
                              "--render", str(tmp_path / "cli.mp4"), "-o", str(tmp_path / "cli.npz"), "--quiet"])
    assert res.exit_code == 0, res.output
    result = KeypointsRunRequest(input=d / "kp.npz", model=d / "cli_model", source=clip, render=tmp_path / "api.mp4",
                                 **opts).run(tmp_path / "api.npz")
    assert result["render"] == tmp_path / "api.mp4" and result["method"] == "GRU-NF"
    assert (tmp_path / "api.mp4").read_bytes() == (tmp_path / "cli.mp4").read_bytes()
    assert np.array_equal(np.load(tmp_path / "api.npz")["value"], np.load(tmp_path / "cli.npz")["value"])
    doc = json.loads((tmp_path / "api.json").read_text())
    assert doc["renderer"] == "preview" and doc["render"] == str(tmp_path / "api.mp4")


def test_run_check_names_parameters(tmp_path):
    kp = _kp_file(tmp_path / "kp.npz")
    for bad, text in [(dict(samples=0), "samples must be >= 1, got 0"),
                      (dict(feedback="all"), "feedback 'all': use one of mean, sample"),
                      (dict(acceptance="row"), "acceptance 'row': use one of"),
                      (dict(step_size=0.0), "step_size must be > 0"), (dict(context=1), "context must be >= 2"),
                      (dict(render_samples="0,7", samples=3), "render_samples indices must lie in 0..2"),
                      (dict(input=None), "input is missing"), (dict(model=kp), "model "),
                      (dict(source=kp), "source"),
                      (dict(fomm=kp, render=tmp_path / "v.mp4"), "animates an image: pass source")]:
        with pytest.raises(VmtUsageError) as e:
            KeypointsRunRequest(**{"input": kp, **bad}).check()
        assert text in str(e.value) and "--" not in str(e.value), str(e.value)
    for output, render, text in [(tmp_path / "p.txt", None, "output .* must end in .npz"),
                                 (tmp_path / "p.npz", tmp_path / "r.npz", "render .* must end in .mp4"),
                                 (kp, None, "same file as the input")]:
        with pytest.raises(VmtUsageError, match=text) as e:
            KeypointsRunRequest(input=kp, render=render).run(output)
        assert "--" not in str(e.value)
    # A model that does not exist fails before any output is written.
    with pytest.raises(VmtUsageError, match="model .* not found"):
        KeypointsRunRequest(input=kp, model=tmp_path / "none").run(tmp_path / "p.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kp.npz"]

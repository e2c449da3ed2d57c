"""`vmt predict-keypoints train|run` end to end on small synthetic data (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cli.main import app
from tests.conftest import moving_pattern
from vmt.keypoints.data import save_sequences

runner = CliRunner()


def _kp_file(path, num_seq=6, length=30, k=2, jac=False, seed=0):
    rng = np.random.default_rng(seed)
    vals, jacs = [], []
    for _ in range(num_seq):
        t = np.arange(length)[:, None, None]
        vals.append((0.5 * np.sin(0.3 * t + rng.uniform(0, 6, (1, k, 2)))).astype(np.float32))
        jacs.append(np.tile(np.eye(2, dtype=np.float32), (length, k, 1, 1)))
    save_sequences(path, [f"id{i % 2}#{i}" for i in range(num_seq)], vals, jacs if jac else None)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("kpcli")
    data = _kp_file(d / "kp.npz")
    res = runner.invoke(app, ["predict-keypoints", "train", str(data), "-o", str(d / "model"), "--context", "4",
                              "--horizon", "3", "--steps", "12", "--eval-every", "6", "--hidden", "8", "--layers",
                              "1", "--flow-hidden", "8", "--blocks", "2", "--cond-dim", "2", "--batch", "16",
                              "--val-identities", "id1", "--quiet"])
    assert res.exit_code == 0, res.output
    return d


def test_train_writes_model_and_validation_history(trained):
    cfg = json.loads((trained / "model" / "config.json").read_text())
    assert cfg["config"]["num_kp"] == 2 and cfg["config"]["jacobian"] is False
    assert all(n.startswith("id0") for n in cfg["data"]["train_sequences"])
    assert all(n.startswith("id1") for n in cfg["data"]["val_sequences"])
    assert [h["step"] for h in cfg["history"]] == [0, 6, 12]
    side = json.loads((trained / "model" / "train.json").read_text())
    assert side["params"]["steps"] == 12
    # A non-empty directory is never silently reused.
    res = runner.invoke(app, ["predict-keypoints", "train", str(trained / "kp.npz"), "-o", str(trained / "model")])
    assert res.exit_code == 2 and "--resume" in res.output


@pytest.mark.slow
def test_run_writes_predictions_in_the_spec_format(trained):
    out = trained / "pred.npz"
    res = runner.invoke(app, ["predict-keypoints", "run", str(trained / "kp.npz"), "-m", str(trained / "model"),
                              "--samples", "5", "--horizon", "4", "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    pred = np.load(out)
    assert pred["value"].shape == (6, 5, 4, 2, 2) and "jacobian" not in pred.files
    assert int(pred["context"]) == 4 and int(pred["horizon"]) == 4
    assert list(pred["names"]) == [f"id{i % 2}#{i}" for i in range(6)]
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["method"] == "GRU-SNF" and 0 < side["mcmc_acceptance"] <= 1
    # Same seed, same output; --no-refine differs.
    out2 = trained / "pred2.npz"
    runner.invoke(app, ["predict-keypoints", "run", str(trained / "kp.npz"), "-m", str(trained / "model"),
                        "--samples", "5", "--horizon", "4", "-o", str(out2), "--quiet"])
    assert np.array_equal(np.load(out2)["value"], pred["value"])
    out3 = trained / "pred3.npz"
    runner.invoke(app, ["predict-keypoints", "run", str(trained / "kp.npz"), "-m", str(trained / "model"),
                        "--samples", "5", "--horizon", "4", "-o", str(out3), "--quiet", "--no-refine"])
    assert not np.array_equal(np.load(out3)["value"], pred["value"])


@pytest.mark.slow
def test_run_bad_inputs_fail_cleanly(trained):
    m = str(trained / "model")
    other = _kp_file(trained / "other.npz", k=3, jac=True)
    short = _kp_file(trained / "short.npz", length=3)
    cases = [
        ([str(other), "-m", m], "expects 2 keypoints without jacobians"),
        ([str(short), "-m", m], "fewer than --context 4"),
        ([str(trained / "kp.npz"), "-m", str(trained)], "no config.json"),
        ([str(trained / "nope.npz"), "-m", m], "not found"),
    ]
    for args, needle in cases:
        out = trained / "bad.npz"
        res = runner.invoke(app, ["predict-keypoints", "run", *args, "-o", str(out)])
        assert res.exit_code == 2, (args, res.output)
        assert needle in " ".join(res.output.split()), res.output
        assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.slow
def test_run_on_video_tracks_and_renders_with_a_tracker_model(tmp_path):
    pytest.importorskip("cv2")
    from vmt.io.video import read_video, write_video

    vids = tmp_path / "vids"
    vids.mkdir()
    for i in range(2):
        write_video(vids / f"clip{i}.mp4", moving_pattern(16, 64, 64, dx=1, dy=1, seed=i), fps=10)
    clip = vids / "clip0.mp4"
    # The shipped model was trained on FOMM keypoints: tracker points are refused, naming the fixes.
    out, vid = tmp_path / "p.npz", tmp_path / "p.mp4"
    res = runner.invoke(app, ["predict-keypoints", "run", str(clip), "-o", str(out), "--samples", "2"])
    assert res.exit_code == 2 and not out.exists()
    msg = " ".join(res.output.split())
    assert "trained on FOMM keypoints" in msg and "--fomm" in msg and "predict-keypoints train" in msg
    # A model trained on tracker points (train on a folder of videos) accepts them.
    res = runner.invoke(app, ["predict-keypoints", "train", str(vids), "-o", str(tmp_path / "lk"), "--context",
                              "4", "--horizon", "3", "--steps", "4", "--eval-every", "2", "--hidden", "8",
                              "--layers", "1", "--flow-hidden", "8", "--blocks", "2", "--cond-dim", "2",
                              "--window-stride", "2", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "lk" / "config.json").read_text())["keypoints_source"] == "lucas-kanade"
    res = runner.invoke(app, ["predict-keypoints", "run", str(clip), "-m", str(tmp_path / "lk"), "-o", str(out),
                              "--render", str(vid), "--samples", "4", "--horizon", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    pred = np.load(out)
    assert pred["value"].shape == (1, 4, 3, 10, 2) and pred["jacobian"].shape == (1, 4, 3, 10, 2, 2)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["keypoints_source"] == "lucas-kanade" and side["renderer"] == "preview"
    frames, _ = read_video(vid)
    assert frames.shape == (3, 64, 128, 3)   # keypoint panel | warped preview panel


@pytest.mark.slow
def test_run_with_a_fomm_checkpoint_extracts_keypoints_and_animates(tmp_path):
    pytest.importorskip("cv2")
    import torch

    from vmt.io.video import read_video, write_video
    from vmt.keypoints.fomm import Fomm
    from vmt.keypoints.tracker import _cv2

    torch.manual_seed(0)
    ckpt = tmp_path / "vox-cpk.pth.tar"
    torch.save(Fomm().checkpoint(), ckpt)               # the public layout, random weights
    clip = tmp_path / "talk.mp4"
    write_video(clip, moving_pattern(9, 256, 256, dx=1, dy=0), fps=10)
    face = tmp_path / "face.png"
    _cv2().imwrite(str(face), moving_pattern(1, 200, 200, seed=3)[0])
    out, vid = tmp_path / "pred.npz", tmp_path / "out.mp4"
    res = runner.invoke(app, ["predict-keypoints", "run", str(clip), "--fomm", str(ckpt), "-o", str(out),
                              "--render", str(vid), "--source", str(face), "--samples", "3", "--horizon", "2",
                              "--render-samples", "0,2", "--quiet"])
    assert res.exit_code == 0, res.output
    kp = np.load(tmp_path / "pred.keypoints.npz")
    assert kp["value"].shape == (9, 10, 2) and kp["jacobian"].shape == (9, 10, 2, 2)
    assert np.all(np.abs(kp["value"]) <= 1) and list(kp["lengths"]) == [9]
    assert np.load(out)["value"].shape == (1, 3, 2, 10, 2)
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["keypoints_source"] == "fomm" and side["renderer"] == "fomm"
    frames, _ = read_video(vid)
    assert frames.shape == (2, 256, 3 * 256, 3)        # keypoints | sample 0 | sample 2


@pytest.mark.slow
def test_run_refuses_outputs_that_clobber_or_are_not_videos(trained, tmp_path):
    kp = str(trained / "kp.npz")
    m = str(trained / "model")
    empty, text = tmp_path / "empty.npz", tmp_path / "text.npz"
    empty.write_bytes(b"")
    text.write_text("not an archive")
    cases = [
        ([kp, "-o", kp], "same file as the input"),
        ([kp, "-o", str(tmp_path / "p.npz"), "--render", kp], "same file as the input"),
        ([kp, "-o", str(tmp_path / "p.npz"), "--render", str(tmp_path / "pred.npz")], "must end in .mp4"),
        ([str(empty), "-o", str(tmp_path / "p.npz")], "is empty (0 bytes)"),
        ([str(text), "-o", str(tmp_path / "p.npz")], "not an .npz archive"),
        ([kp, "-o", str(tmp_path / "p.npz"), "--fomm", str(tmp_path / "none.pth")], "not found"),
        ([kp, "-o", str(tmp_path / "p.npz"), "--fomm", kp, "--render", str(tmp_path / "v.mp4")], "pass --source"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, ["predict-keypoints", "run", *args, "-m", m])
        assert res.exit_code == 2, (args, res.output)
        out = " ".join(res.output.split())
        assert needle in out and "jacobian has" not in out and "pickled" not in out, out   # not the wrong blame
        assert not (tmp_path / "p.npz").exists()
    assert np.load(kp)["value"].shape[1] == 2           # the input is untouched


def test_tracker_follows_a_known_translation():
    pytest.importorskip("cv2")
    from vmt.keypoints.tracker import track_keypoints

    clip = moving_pattern(8, 96, 96, dx=2, dy=1)
    pos, jac = track_keypoints(clip, num_kp=6, jacobian=True)
    # The texture moves by (+2, +1) px a frame, so features move by (-2, -1) px in view coordinates.
    step = np.diff(pos, axis=0) * np.array([95 / 2, 95 / 2])
    assert np.allclose(np.median(step, axis=(0, 1)), [-2, -1], atol=0.15)
    assert np.allclose(np.median(jac[-1], axis=0), np.eye(2), atol=0.1)  # pure translation: identity


def test_shipped_model_is_small_residual_and_its_calibration_was_fitted_on_an_unseen_face():
    from vmt.keypoints import DEFAULT_MODEL_DIR
    from vmt.keypoints.data import identity_of
    from vmt.keypoints.model import load_model
    from vmt.keypoints.pipeline import FOMM_SOURCE, keypoint_source

    model, doc = load_model(DEFAULT_MODEL_DIR)
    size = sum(f.stat().st_size for f in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 10 * 2**20
    assert model.cfg.num_kp == 10 and model.cfg.jacobian
    assert keypoint_source(doc) == FOMM_SOURCE          # so `run` refuses tracker points with it
    # Residual with displacement shrinkage and a damped-velocity share (the recipe that beat zero, constant and
    # damped velocity leave-one-identity-out), trained on all four shared identities; the factors came from a
    # calibration model that never saw their identity.
    assert model.cfg.param == "residual" and len(model.cfg.shrink) == model.cfg.horizon
    assert all(0.0 <= a <= 1.0 for a in model.cfg.shrink) and min(model.cfg.shrink) < 1.0
    assert len(model.cfg.velocity_gain) == model.cfg.horizon and 0.0 < model.cfg.damping < 1.0
    assert all(0.0 <= a <= 1.0 for a in model.cfg.velocity_gain)
    trained = {identity_of(n) for n in doc["data"]["train_sequences"]}
    assert trained == {"id10283", "id10284", "id10286", "id10291"}
    cal = doc["shrink_calibration"]
    assert cal["calib_identities"] and not set(cal["calib_identities"]) & set(cal["model_trained_on"])
    assert cal["tool"] == "benchmarks/calibrate_default_model.py"


def test_tps_reproduces_affine_maps_and_the_warp_shifts_a_frame():
    pytest.importorskip("cv2")
    from vmt.keypoints.render import tps_map, warp_preview

    rng = np.random.default_rng(0)
    src = rng.uniform(0, 50, (7, 2))
    aff = np.array([[1.1, 0.2], [-0.1, 0.9]])
    q = rng.uniform(0, 50, (20, 2))
    assert np.allclose(tps_map(src, src @ aff.T + [3, -2], q, reg=0.0), q @ aff.T + [3, -2], atol=1e-8)
    # Keypoints translated by (+3, +2) px: the preview is the frame shifted by (3, 2) (interior).
    frame = moving_pattern(1, 40, 48)[0]
    ctx = rng.uniform(-0.6, 0.6, (6, 2))
    fut = ctx + np.array([3 * 2 / 47, 2 * 2 / 39])
    out = warp_preview(frame, ctx, fut[None], anchors=False)[0]
    assert np.abs(out[5:-5, 5:-5].astype(int) - frame[3:-7, 2:-8].astype(int)).max() <= 1


@pytest.mark.slow
def test_paper_recipes_set_the_horizons(trained):
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "recipes" / "predict-keypoints"
    for name, (c, h) in {"vox-8-16.toml": (8, 16), "vox-10-14.toml": (10, 14)}.items():
        out = trained / f"r{c}.npz"
        res = runner.invoke(app, ["predict-keypoints", "run", str(trained / "kp.npz"), "-m", str(trained / "model"),
                                  "--samples", "2", "--recipe", str(recipes / name), "-o", str(out), "--quiet"])
        assert res.exit_code == 0, res.output
        pred = np.load(out)
        assert (int(pred["context"]), int(pred["horizon"])) == (c, h) and pred["value"].shape[2] == h
    # A flag given on the command line wins over the recipe.
    out = trained / "r_flag.npz"
    res = runner.invoke(app, ["predict-keypoints", "run", str(trained / "kp.npz"), "-m", str(trained / "model"),
                              "--samples", "2", "--recipe", str(recipes / "vox-10-14.toml"), "--context", "6",
                              "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert (int(np.load(out)["context"]), int(np.load(out)["horizon"])) == (6, 14)

"""benchmarks/gpu_suite.py at its CPU size: it runs through vmt's real code and writes the JSON it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_suite_cpu_preset_writes_its_json(tmp_path):
    out = tmp_path / "suite.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    sets = "default,no-checkpointing,group-offload,float8-storage,attention-_native_math,i2v"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "--preset", "cpu",
                        "--options", sets, "--out", str(out)], env=env, capture_output=True, text=True,
                       timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["schema"] == "vmt.gpu_suite/1" and doc["preset"] == "cpu"
    assert doc["size"] == {"frames": 9, "height": 64, "width": 96}
    rows = {(c["options"], c["case"]): c for c in doc["cases"]}
    assert set(rows) == {
        ("default", "refine-plain"), ("default", "refine-pnp"), ("default", "transfer-guided-windowed"),
        ("default", "transfer-guided-global"), ("no-checkpointing", "refine-plain"),
        ("no-checkpointing", "transfer-guided-windowed"), ("no-checkpointing", "transfer-guided-global"),
        *((s, c) for s in sets.split(",")[2:-1] for c in ("refine-plain", "transfer-guided-windowed")),
        ("i2v", "transfer-i2v-windowed"), ("i2v", "chain-3-segments"),
    }
    for c in doc["cases"]:
        assert c["status"] == "ok", c
        assert c["memory"].startswith("rss") and c["peak_mib"] >= c["base_mib"] > 0
        assert c["arch"] == "small"
        if c["case"].startswith("refine"):
            assert c["seconds_per_step"] > 0 and c["seconds_per_nfe"] > 0
            # CFG on: two DiT passes per evaluation; P&P's plan 0-1:1 adds one evaluation per step
            assert c["nfe"] == (4 if c["case"] == "refine-pnp" else 2) and c["dit_forward"] == 2 * c["nfe"]
        elif c["case"] == "chain-3-segments":
            # 3 segments of 9 frames on the last frame of the one before: 9 + 8 + 8 frames, 2 steps each
            assert c["segments"] == 3 and c["frames"] == 25 and c["nfe"] == 6 and len(c["segment_s"]) == 3
            assert c["seconds_per_segment"] > 0 and c["drift"]["final_delta_e"] is not None
        else:
            # one guided step as released: 10 inner steps, a forward+backward at 0, 3, 6, 9; one reference
            # forward; then the step's CFG pair
            assert c["dit_backward"] == 4 and c["dit_forward"] == 4 + 1 + 2 and c["guided_step_s"] > 0
            assert c["i2v"] == (c["options"] == "i2v")  # onto a photo: the image-to-video architecture
    models = {c["options"]: c["model"] for c in doc["cases"] if "model" in c}
    assert models["i2v"]["pipeline"] == "WanImageToVideoPipeline"
    assert models["default"]["grad_checkpointing"] is True and models["no-checkpointing"]["grad_checkpointing"] is False
    assert models["group-offload"]["offload"] == "group"
    assert models["float8-storage"]["storage_dtype"] == "float8_e4m3fn"
    assert models["attention-_native_math"]["guided_attention_backend"] == "_native_math"
    s = doc["summary"]["small"]
    assert {"refine_50_steps_s", "refine_default_plan_s_estimate", "checkpointing_windowed_delta_memory_ratio",
            "checkpointing_windowed_time_ratio"} <= set(s)

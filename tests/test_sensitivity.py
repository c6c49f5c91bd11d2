"""Per-layer int8 sensitivity (``mobilevits sensitivity``): each group quantised alone, ranked worst first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mobilevits.workflows.sensitivity import format_sensitivity, groups_of, sensitivity, write_sensitivity_plot

MODEL, RES = "mobilevit_tiny", 96


def test_groups_are_the_blocks_with_parameters():
    import mobilevits

    assert groups_of(mobilevits.create_model("levit_128s")) == ["stem.0", "stem.1", "stem.2", "stem.3", "stages.0",
                                                                "stages.1", "stages.2", "head", "head_dist"]
    deit = groups_of(mobilevits.create_model("deit_tiny"))
    assert deit[:2] == ["patch_embed", "blocks.0"] and deit[-3:] == ["blocks.11", "norm", "head"]
    # a container's parameter-free children (an activation between convs) are no group
    import torch.nn as nn

    net = nn.Module()
    net.body = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1))
    net.pool = nn.AdaptiveAvgPool2d(1)
    assert groups_of(net) == ["body.0", "body.2"]


def test_each_group_alone_is_ranked_worst_first_and_the_worst_are_named_for_keep_float(digits_weights, tmp_path):
    r = sensitivity(MODEL, "executorch", weights=digits_weights, resolution=RES, limit=48, calibration=8,
                    groups=["stages.1", "stages.3", "head"], show_progress=False)
    rows = r["rows"]
    assert [x["sqnr_db"] for x in rows] == sorted(x["sqnr_db"] for x in rows)
    assert {x["group"] for x in rows} == {"stages.1", "stages.3", "head"} and r["images"] == 48
    # one group alone moves the logits less than the whole model in int8
    assert r["all_int8"]["sqnr_db"] < max(x["sqnr_db"] for x in rows)
    assert all(-1 <= x["top1_cost"] <= 1 and 0 <= x["agreement"] <= 1 for x in rows)
    assert r["keep_float"] == rows[0]["group"]  # below the median of three: the worst one
    text = format_sensitivity(r)
    assert text.index(rows[0]["group"]) < text.index(rows[-1]["group"]) and "--keep-float" in text
    assert write_sensitivity_plot(r, tmp_path / "s.png").stat().st_size > 1000


def test_an_unknown_group_is_refused_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mobilevits", "sensitivity", MODEL, "--backend", "executorch",
                        "--resolution", str(RES), "--groups", "stages.1,nowhere", "--limit", "8"],
                       capture_output=True, text=True)
    lines = [s for s in r.stderr.splitlines() if s.startswith("mobilevits")]
    assert r.returncode == 2 and len(lines) == 1 and "nowhere" in lines[0] and "groups: stem" in lines[0], r.stderr


@pytest.mark.parametrize("flag", ["--json"])
def test_cli_prints_json_for_machines(digits_weights, flag):
    r = subprocess.run([sys.executable, "-m", "mobilevits", "sensitivity", MODEL, "--backend", "tflite",
                        "--weights", digits_weights, "--resolution", str(RES), "--groups", "head", "--limit", "16",
                        "--calibration", "4", flag], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["backend"] == "tflite" and [x["group"] for x in out["rows"]] == ["head"]

"""`mobilevits findings`: the evaluators on made-up sweeps with known answers, and the whole flow on tiny models."""

from __future__ import annotations

import math

import pytest

from mobilevits.workflows import findings as fd
from mobilevits.workflows.cli import build_parser

TINY_ROLES = {fd.MNV3: "mobilenetv3_tiny", fd.EFFICIENTNET: "efficientnet_tiny", fd.MOBILEVIT: "mobilevit_tiny",
              fd.MOBILE_FORMER: "mobile_former_tiny", fd.LEVIT: "levit_tiny", fd.SEPVIT: "sepvit_tiny",
              fd.DEIT: "deit_test", fd.DEIT_RELU: "deit_test_relu_attention", fd.DEIT_DW: "deit_test_dw_attention"}


def _cell(model: str, res: int, ms: float, runtime: str = "executorch") -> dict:
    return {"model": model, "resolution": res, "runtime": runtime, "threads": 1, "stats": {"median_ms": ms}}


def _sweep(latency, runtime: str = "executorch") -> dict:
    """A bench result whose median latency is latency(model, resolution) for every planned cell."""
    return {"cells": [_cell(m, r, latency(m, r), runtime) for m, r in fd.plan()]}


def _by_id(found: list[dict]) -> dict[str, dict]:
    return {f["id"]: f for f in found}


def test_statistics_helpers():
    assert fd.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert fd.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert fd.spearman([1, 2, 3], [5, 5, 5]) == 0.0  # no variation: no correlation
    a, b = fd.fit_line([0, 1, 2], [1, 3, 5])
    assert (a, b) == (pytest.approx(1.0), pytest.approx(2.0))
    # latency proportional to pixels^0.8
    assert fd.pixel_exponent({r: (r * r) ** 0.8 for r in (160, 224, 320)}) == pytest.approx(0.8)
    assert fd.grows({160: 10.0, 192: 9.8, 224: 12.0})  # a 2% dip is noise
    assert not fd.grows({160: 10.0, 192: 9.0, 224: 12.0})  # a 10% dip is not
    assert not fd.grows({160: 10.0, 192: 10.0})  # flat is not growth


def test_findings_reproduced_on_a_sweep_with_the_papers_shape():
    conv = {fd.MNV3: 1.0, fd.EFFICIENTNET: 3.0}

    def latency(m: str, r: int) -> float:
        px = (r / 224) ** 2
        if m == fd.MOBILE_FORMER:  # large fixed cost: the ratio to MobileNetV3 falls with resolution
            return 1.0 + 0.6 * px
        if m in conv:
            return conv[m] * px ** 0.9
        return {fd.MOBILEVIT: 5.0, fd.LEVIT: 2.0, fd.SEPVIT: 0.5, fd.DEIT: 4.0, fd.DEIT_RELU: 3.0,
                fd.DEIT_DW: 2.5}[m] * px ** 1.2
    found = _by_id(fd.evaluate(_sweep(latency), "executorch"))
    assert all(f["reproduced"] for f in found.values()), {k: f["measured"] for k, f in found.items()}
    mf = found["mobile_former_vs_resolution"]["measured"]
    assert mf["spearman"] == pytest.approx(-1.0)
    assert mf["ratio"][224] == pytest.approx(1.6) and mf["crossover_resolution"] == 512  # 4.13 / 4.43 ms
    share = mf["latency_fixed_share"][fd.MOBILE_FORMER]["share"]
    assert share[96] > share[512]  # the resolution-independent part dominates small inputs
    mv = found["mobilevit_vs_mobilenet"]["measured"]["ratio_at_256"]
    assert mv == pytest.approx(5.0 * (256 / 224) ** 0.6)
    res = found["latency_vs_resolution"]["measured"]
    assert res["models"][fd.LEVIT]["exponent"] == pytest.approx(1.2)
    assert res["models"][fd.MNV3]["exponent"] == pytest.approx(0.9)
    assert res["attention_above_convolutional"] is True
    assert found["sepvit_tradeoff"]["measured"]["ratio_vs_mobilevit_xs"] == pytest.approx(0.1)
    assert {f["runtime"] for f in found.values()} == {"executorch"}


def test_summary_survives_a_json_round_trip():
    import json

    f = {"id": "mobile_former_vs_resolution", "measured": {
        "ratio": {96: 3.0, 160: 2.0, 512: 0.9}, "spearman": -1.0, "crossover_resolution": 512,
        "macs_fixed_share": {"mf": {"share": {96: 0.36, 160: 0.17, 512: 0.02}}}}}
    text = fd.summary(json.loads(json.dumps(f)))  # keys become strings: "160" < "96"
    assert "36% at 96, 2% at 512" in text and "crossover at 512" in text


def test_findings_not_reproduced_when_the_shape_is_opposite():
    def latency(m: str, r: int) -> float:
        px = (r / 224) ** 2
        if m == fd.MOBILE_FORMER:  # ratio grows with resolution
            return px ** 1.3
        if m == fd.LEVIT:
            return 9.0 * px
        if m == fd.EFFICIENTNET:
            return 3.0 * px
        if m == fd.MOBILEVIT:
            return 1.5 * px  # only 1.5x MobileNetV3
        if m == fd.SEPVIT:
            return 2.0 * px  # slower and less accurate than MobileNetV3
        return px if r != 288 else 0.5  # MobileNetV3 dips at 288: not monotone
    found = _by_id(fd.evaluate(_sweep(latency, "tflite"), "tflite"))
    assert fd.evaluate(_sweep(latency, "tflite"), "executorch")[1]["measured"]["ratio_at_256"] is None
    assert not any(f["reproduced"] for f in found.values()), {k: f["reproduced"] for k, f in found.items()}
    assert found["latency_vs_resolution"]["measured"]["models"][fd.MNV3]["grows"] is False
    assert found["levit_vs_efficientnet"]["measured"]["ratio"] == pytest.approx(3.0)


def test_levit_finding_needs_a_single_thread():
    def latency(m: str, r: int) -> float:
        return 1.0 if m == fd.LEVIT else 2.0
    f = _by_id(fd.evaluate(_sweep(latency), "executorch", threads=2))["levit_vs_efficientnet"]
    assert f["reproduced"] is False and "single-threaded" in f["measured"]["note"]


@pytest.mark.parametrize("relu_ms, dw_ms, reproduced", [(8.0, 7.0, True), (9.9, 7.0, False), (8.0, 11.0, False)])
def test_softmax_free_finding_needs_both_variants_faster(relu_ms, dw_ms, reproduced):
    def latency(m: str, r: int) -> float:
        return {fd.DEIT: 10.0, fd.DEIT_RELU: relu_ms, fd.DEIT_DW: dw_ms}.get(m, 1.0)
    f = _by_id(fd.evaluate(_sweep(latency), "executorch"))["softmax_free_attention"]
    assert f["reproduced"] is reproduced  # 9.9 vs 10.0 is within the 3% noise: not faster
    assert f["measured"]["ratio"][fd.DEIT_DW] == pytest.approx(dw_ms / 10.0)
    assert f"{fd.DEIT_DW} {dw_ms / 10.0:.2f}x" in fd.summary(f)


def test_plan_covers_every_finding_and_roles_are_checked():
    cells = fd.plan()
    assert (fd.MOBILEVIT, 256) in cells and (fd.LEVIT, 224) in cells and (fd.SEPVIT, 224) in cells
    assert {(m, 224) for m in fd.SOFTMAX_FREE} <= set(cells)
    assert {r for m, r in cells if m == fd.MOBILE_FORMER} == set(fd.MF_RESOLUTIONS) | set(fd.SWEEP_RESOLUTIONS)
    assert len(cells) == len(set(cells))
    with pytest.raises(ValueError, match="unknown role 'resnet50'"):
        fd.plan({"resnet50": "x"})


def test_merge_sessions_takes_the_median_of_session_medians():
    def session(ms: list[float], seed: int) -> dict:
        cells = [{"id": "a", "model": "m", "resolution": 96, "runtime": "torch", "threads": 1,
                  "samples_ms": [x, x], "stats": {"median_ms": x}} for x in ms]
        return {"cells": cells, "order": ["a"], "settings": {"seed": seed}}
    merged = fd.merge_sessions([session([10.0], 0), session([50.0], 1), session([12.0], 2)])  # one slow burst
    cell = merged["cells"][0]
    assert cell["stats"]["median_ms"] == 12.0 and cell["session_medians_ms"] == [10.0, 50.0, 12.0]
    assert cell["samples_ms"] == [10.0, 10.0, 50.0, 50.0, 12.0, 12.0] and merged["settings"]["seeds"] == [0, 1, 2]


def test_cli_parses_findings_options():
    args = build_parser().parse_args(["findings", "--runtime", "executorch,tflite", "--iterations", "3", "--json"])
    assert args.runtime == "executorch,tflite" and args.iterations == 3 and args.json and args.threads == 1
    assert args.repeats == 3


@pytest.mark.slow
def test_whole_flow_on_tiny_models(tmp_path):
    # PyTorch eager on tiny stand-ins: the real sweep's cells, timing and judging, in seconds
    result = fd.findings(runtime="torch", roles=TINY_ROLES, mf_resolutions=(96, 128), sweep_resolutions=(128, 160),
                         warmup=0, iterations=2, cooldown=0.0, out=tmp_path, plot=tmp_path / "f.png", repeats=2)
    found = result["findings"]
    assert [f["id"] for f in found] == ["mobile_former_vs_resolution", "mobilevit_vs_mobilenet",
                                        "levit_vs_efficientnet", "latency_vs_resolution", "sepvit_tradeoff",
                                        "softmax_free_attention"]
    assert all(isinstance(f["reproduced"], bool) and f["runtime"] == "torch" for f in found)
    cells = {(c["model"], c["resolution"]): c["stats"]["median_ms"] for c in result["bench"]["cells"]}
    assert set(cells) == set(fd.plan(TINY_ROLES, (96, 128), (128, 160)))
    mv = _by_id(found)["mobilevit_vs_mobilenet"]["measured"]["ratio_at_256"]
    assert math.isclose(mv, cells[("mobilevit_tiny", 256)] / cells[("mobilenetv3_tiny", 256)])
    assert (tmp_path / "f.png").stat().st_size > 0
    assert result["bench"]["sessions"] == 2 and len(result["bench"]["order"]) == 2
    cell = result["bench"]["cells"][0]
    assert len(cell["session_medians_ms"]) == 2 and len(cell["samples_ms"]) == 4
    assert "claim:" in fd.format_findings(result) and "EMULATED" not in fd.format_findings(result)
    emulated = {**result, "bench": {**result["bench"], "device": {"kind": "qemu-arm64", "cpu": "cortex-a76",
                                                                  "emulated": True}}}
    assert fd.format_findings(emulated).startswith("EMULATED (qemu-arm64 CPU cortex-a76)")

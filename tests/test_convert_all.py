"""benchmarks/convert_all.py's tables: the numbers BENCHMARKS.md shows come from the right cells."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def convert_all():
    spec = importlib.util.spec_from_file_location("convert_all", ROOT / "benchmarks" / "convert_all.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cell(model, runtime, precision, threads, median, p10, cv=0.02):
    return {"model": model, "resolution": 224, "runtime": runtime, "precision": precision, "threads": threads,
            "median_ms": median, "p10_ms": p10, "p90_ms": median * 1.1, "cv": cv}


def test_latency_table_ratios_and_disturbed_cells(convert_all):
    cells = [_cell("m", "executorch", "fp32", 1, 30.0, 12.0, cv=0.3), _cell("m", "tflite", "fp32", 1, 10.0, 10.0),
             _cell("m", "executorch", "int8", 1, 15.0, 6.0), _cell("m", "torch", "fp32", 1, 50.0, 49.0)]
    head, _, row, _, legend = convert_all.latency_table(cells, [1])
    assert legend == f"- host A: {convert_all.UNRECORDED_HOST}"
    assert head.count("|") == row.count("|")
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert cols[:4] == ["m", "224", "50.0", "30.0*"]  # eager, then the disturbed ExecuTorch cell starred
    assert cols[-3] == "3.00; 1.20"  # ET/LiteRT by medians, then by 10th percentiles
    assert cols[-2] == "0.50; 0.50"  # ET int8/fp32
    assert cols[-1] == "A"  # cells saved without a host share the "not recorded" legend entry
    assert cols[cols.index("15.0") + 1] == "10.0" and "-" in cols  # LiteRT fp32 shown; LiteRT int8 missing


def test_markdown_replaces_only_its_block(convert_all, tmp_path):
    md = tmp_path / "B.md"
    md.write_text(f"# B\n\nkeep\n\n{convert_all.BEGIN}\nSTALE ROW\n{convert_all.END}\n\nafter\n")
    rows = [{"model": "m", "backend": "tflite", "precision": "fp32", "resolution": 224, "convert_s": 3.0,
             "size_mb": 1.5, "delegation": {"fraction": 0.5, "not_delegated_ops": {"FULLY_CONNECTED": 2},
                                            "delegated": 2},
             "check": {"sqnr_db": 25.0, "threshold_db": 60.0, "passed": False}},
            {"model": "a", "backend": "executorch", "precision": "int8", "resolution": 224, "error": "Boom: x"}]
    convert_all.write_markdown({"environment": {"cpu": "c", "cpu_count": 2, "git_commit": "abc"},
                                "conversions": rows, "latency": None}, md, "--resume")
    text = md.read_text()
    assert "keep" in text and "after" in text and "STALE ROW" not in text
    assert text.index("| a | executorch int8 | failed: Boom: x") < text.index("| m | tflite fp32")  # sorted
    assert "| 50% | FULLY_CONNECTED x2 | 25.0 (60) | FAIL |" in text


def test_report_only_rewrites_the_tables_from_saved_results(convert_all, tmp_path, monkeypatch):
    import json
    import sys

    raw, md = tmp_path / "r.json", tmp_path / "B.md"
    rows = [{"model": "m", "backend": "tflite", "precision": "int8", "resolution": 224, "convert_s": 3.0,
             "size_mb": 1.5, "delegation": {"fraction": 1.0, "not_delegated_ops": {}, "delegated": 9},
             "check": {"sqnr_db": 41.0, "threshold_db": 30.0, "passed": True}}]
    raw.write_text(json.dumps({"environment": {"cpu": "c", "cpu_count": 2, "git_commit": "abc"},
                               "conversions": rows, "latency": None}))
    monkeypatch.setattr(sys, "argv", ["convert_all.py", "--report-only", "--results", str(raw), "--markdown", str(md)])
    assert convert_all.main() == 0
    assert "| m | tflite int8 |" in md.read_text() and "41.0 (30) | pass |" in md.read_text()
    monkeypatch.setattr(sys, "argv", ["convert_all.py", "--report-only", "--results", str(tmp_path / "none.json")])
    with pytest.raises(SystemExit):
        convert_all.main()


def test_redo_converts_saved_cells_again_and_keeps_the_rest(convert_all, tmp_path, monkeypatch):
    import json
    import sys

    raw, md = tmp_path / "r.json", tmp_path / "B.md"
    row = {"resolution": 224, "convert_s": 1.0, "size_mb": 1.0, "artifact": "x",
           "delegation": {"fraction": 1.0, "not_delegated_ops": {}, "delegated": 1},
           "check": {"sqnr_db": 70.0, "threshold_db": 60.0, "passed": True}}
    grid = [(m, b) for m in ("mobilevit_xxs", "levit_128s") for b in ("executorch", "tflite")]
    saved = [{"model": m, "backend": b, "precision": "fp32", **row} for m, b in grid]
    timing = [_cell(m, b, "fp32", 1, 10.0, 9.0) for m, b in grid]
    raw.write_text(json.dumps({"environment": convert_all.host_environment(), "conversions": saved, "latency": timing}))
    redone = []

    def fake_cell(model, backend, precision, out):
        redone.append((model, backend, precision))
        return {"model": model, "backend": backend, "precision": precision, **row, "convert_s": 2.0}

    monkeypatch.setattr(convert_all, "convert_cell", fake_cell)
    monkeypatch.setattr(sys, "argv", ["convert_all.py", "--resume", "--redo", "--no-latency",
                                      "--models", "mobilevit_xxs", "--paths", "executorch:fp32", "--results",
                                      str(raw), "--markdown", str(md), "--out", str(tmp_path / "art")])
    assert convert_all.main() == 0
    assert redone == [("mobilevit_xxs", "executorch", "fp32")]
    data = json.loads(raw.read_text())
    by = {(r["model"], r["backend"]): r["convert_s"] for r in data["conversions"]}
    assert by == {("mobilevit_xxs", "executorch"): 2.0, ("mobilevit_xxs", "tflite"): 1.0,
                  ("levit_128s", "executorch"): 1.0, ("levit_128s", "tflite"): 1.0}
    # the replaced artifact's old timing is dropped, the others are kept
    assert {(c["model"], c["runtime"]) for c in data["latency"]} == {
        ("mobilevit_xxs", "tflite"), ("levit_128s", "executorch"), ("levit_128s", "tflite")}


def test_int8_table_shows_the_rule_that_decided(convert_all):
    rows = [{"model": "m", "backend": "tflite", "precision": "int8",
             "check": {"rule": "margin", "sqnr_db": 27.0, "sqnr_quantised_vs_float_db": 19.5, "margin_db": 7.5,
                       "top1_agreement": 0.975, "images": 359, "passed": True}},
            {"model": "m", "backend": "coreml", "precision": "int8",
             "check": {"rule": "sqnr", "sqnr_db": 12.0, "sqnr_quantised_vs_float_db": 38.0, "margin_db": -26.0,
                       "top1_agreement": 1.0, "images": 16, "passed": False}},
            {"model": "m", "backend": "tflite", "precision": "fp32", "check": {"rule": "sqnr", "sqnr_db": 120.0}}]
    lines = convert_all.int8_table(rows)
    assert len(lines) == 4  # header, rule, two int8 rows; fp32 is not an int8 cell
    assert lines[2] == "| m | tflite int8 | margin | 27.0 | 19.5 | +7.5 | 97.5% | 359 | pass |"
    assert lines[3].endswith("| sqnr | 12.0 | 38.0 | -26.0 | 100.0% | 16 | FAIL |")
    assert convert_all.int8_table(rows[2:]) == []


def test_failed_int8_cell_shows_its_per_op_check(convert_all, tmp_path, monkeypatch):
    """An int8 cell that fails end to end is checked op by op; the table says whether every op was within one
    int8 step (a faithful program) or names a divergence."""
    calls = []

    def fake_check(artifact, **kw):
        calls.append(kw)
        status = ["ok"] * 5 + (["diverged"] if "bad" in str(artifact) else [])
        return {"layers": [{"status": s} for s in status], "layers_runtime_identical": True,
                "first_divergence": None if "bad" not in str(artifact) else {"op": "conv"}}

    monkeypatch.setattr(convert_all, "check_artifact", fake_check)
    good, bad = convert_all.per_op_check("good.pte"), convert_all.per_op_check("bad.pte")
    assert calls[0]["layers"] and calls[0]["limit"] == 1
    assert (good["within"], good["compared"]) == (5, 5) and (bad["within"], bad["compared"]) == (5, 6)
    base = {"model": "m", "backend": "executorch", "precision": "int8", "resolution": 224, "convert_s": 3.0,
            "size_mb": 1.5, "delegation": {"fraction": 1.0, "not_delegated_ops": {}},
            "check": {"sqnr_db": 27.0, "threshold_db": 30.0, "passed": False}}
    rows = convert_all.conversion_table([{**base, "per_op": good}, {**base, "model": "n", "per_op": bad},
                                         {**base, "model": "o", "per_op": {"error": "Boom: x"}}])
    assert rows[2].endswith("| FAIL (per-op: 5/5 within one int8 step) |")
    assert rows[3].endswith("| FAIL (per-op: 5/6 within one int8 step, DIVERGED) |")
    assert rows[4].endswith("| FAIL (per-op check failed: Boom: x) |")


def test_timing_some_models_keeps_the_others_and_names_the_host(convert_all, tmp_path, monkeypatch):
    import json
    import sys

    raw, md = tmp_path / "r.json", tmp_path / "B.md"
    row = {"resolution": 224, "convert_s": 1.0, "size_mb": 1.0, "artifact": str(tmp_path / "x"),
           "delegation": {"fraction": 1.0, "not_delegated_ops": {}, "delegated": 1},
           "check": {"sqnr_db": 70.0, "threshold_db": 60.0, "passed": True}}
    (tmp_path / "x").write_bytes(b"")
    saved = [{"model": m, "backend": "executorch", "precision": "fp32", **row} for m in ("mobilevit_xxs", "levit_128s")]
    old = [{**_cell(m, "executorch", "fp32", 1, 10.0, 9.0), "host": "old host"}
           for m in ("mobilevit_xxs", "levit_128s")]
    raw.write_text(json.dumps({"environment": convert_all.host_environment(), "conversions": saved, "latency": old}))

    def fake_bench(artifacts=None, models=None, runtime=None, **kw):
        runtimes = ["torch"] if runtime == "torch" else ["executorch"]
        cells = [{"model": "mobilevit_xxs", "resolution": 224, "runtime": rt, "precision": "fp32", "threads": 1,
                  "stats": {"median_ms": 5.0, "p10_ms": 4.0, "p90_ms": 6.0, "cv": 0.01}} for rt in runtimes]
        return {"cells": cells, "settings": {"threads": [1], "warmup": 1, "iterations": 2}}

    monkeypatch.setattr(convert_all, "bench", fake_bench)
    monkeypatch.setattr(convert_all, "host_environment", lambda: {"cpu": "CPU X", "cpu_id": "family 1 model 2",
                                                                 "cpu_isa": ["avx2", "avx512_vnni"], "cpu_count": 2,
                                                                 "git_commit": "abcdef0", "tool_versions":
                                                                 convert_all.tool_versions()})
    monkeypatch.setattr(sys, "argv", ["convert_all.py", "--resume", "--models", "mobilevit_xxs", "--paths",
                                      "executorch:fp32", "--results", str(raw), "--markdown", str(md),
                                      "--out", str(tmp_path / "art")])
    assert convert_all.main() == 0
    cells = {(c["model"], c["runtime"]): c for c in json.loads(raw.read_text())["latency"]}
    assert set(cells) == {("levit_128s", "executorch"), ("mobilevit_xxs", "executorch"), ("mobilevit_xxs", "torch")}
    assert cells[("levit_128s", "executorch")]["host"] == "old host"  # another model's timing is kept
    new = cells[("mobilevit_xxs", "executorch")]
    assert new["median_ms"] == 5.0 and new["host"].startswith("CPU X (family 1 model 2; avx2+avx512_vnni), 2 cores")
    text = md.read_text()
    assert "- host A: old host" in text and "- host B: CPU X (family 1 model 2; avx2+avx512_vnni)" in text
    assert "| levit_128s | 224 |" in text and text.split("| levit_128s | 224 |")[1].split("\n")[0].endswith("| A |")


def test_cpu_isa_reads_x86_flags_and_arm_features():
    from mobilevits.workflows.bench import cpu_isa

    x86 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 fma avx512f avx512_vnni\n"
    assert cpu_isa(x86) == ["avx2", "fma", "avx512f", "avx512_vnni"]
    assert cpu_isa("flags : fpu sse avx2 fma\n") == ["avx2", "fma"]  # no VNNI: int8 GEMMs at about fp32 speed
    arm = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp i8mm\nCPU part\t: 0xd0b\n"
    assert cpu_isa(arm) == ["asimd", "asimddp", "i8mm"]
    assert cpu_isa("nothing here") == []

"""Latency harness: parsers on recorded tool outputs, adb/iOS flows against stand-in tools, a tiny host run.

Never asserts durations: only structure, flags and the numbers parsed from recorded outputs.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

from converters.base import RuntimeUnavailableError
from converters.pipeline import SIDECAR_FORMAT
from mobilevits.workflows import devices
from mobilevits.workflows.app_assets import compute_stats
from mobilevits.workflows.bench import bench, format_table, statistics
from mobilevits.workflows.devices import DeviceError

FIX = Path(__file__).parent / "fixtures" / "bench"


def _fx(name: str) -> str:
    return (FIX / name).read_text()


# --------------------------------------------------------------------------------------------
# parsers
# --------------------------------------------------------------------------------------------


def test_parse_executor_runner_posix_and_logcat():
    r = devices.parse_executor_runner(_fx("executor_runner_posix.txt"))
    assert r["load_ms"] == pytest.approx(12.345678)
    assert r["samples_ms"] == pytest.approx([9.876543, 2.25, 2.1, 2.2, 2.05])
    assert r["executions"] == 5 and r["total_ms"] == pytest.approx(18.476543) and r["threads"] == 4
    r = devices.parse_executor_runner(_fx("executor_runner_logcat.txt"))
    assert r["load_ms"] == 20.5 and r["samples_ms"] == [7.5, 3.25, 3.5] and r["threads"] == 2
    with pytest.raises(DeviceError, match="posix"):
        devices.parse_executor_runner("E 00:00:00.1 executorch:x.cpp:1] failed\n")


def test_parse_benchmark_model_classic():
    r = devices.parse_benchmark_model(_fx("benchmark_model_classic.txt"))
    assert r["init_ms"] == pytest.approx(123.456) and r["first_ms"] == pytest.approx(4.569)
    assert r["warmup_avg_ms"] == pytest.approx(1.9963) and r["avg_ms"] == pytest.approx(1.6902)
    assert (r["runs"], r["warmup_runs"]) == (100, 10)  # the second count= line is the timed run
    assert (r["min_ms"], r["max_ms"], r["std_ms"]) == pytest.approx((1.65, 1.83, 0.025))


def test_parse_benchmark_model_exponent_and_all_same():
    r = devices.parse_benchmark_model(_fx("benchmark_model_classic_large.txt"))
    assert r["init_ms"] == pytest.approx(2345.6) and r["avg_ms"] == pytest.approx(1073.33)
    assert r["warmup_runs"] == 1 and r["runs"] == 3 and r["max_ms"] == pytest.approx(1100.0)
    with pytest.raises(DeviceError, match="no timing summary"):
        devices.parse_benchmark_model("INFO: STARTING!\n")


def test_parse_benchmark_model_compiled_model_tool():
    r = devices.parse_benchmark_model(_fx("benchmark_model_compiled.txt"))
    assert r["tool"].endswith("(CompiledModel)")
    assert (r["init_ms"], r["first_ms"], r["avg_ms"], r["runs"], r["warmup_runs"]) == (45.67, 3.21, 1.69, 100, 10)
    assert (r["min_ms"], r["max_ms"], r["std_ms"]) == (1.65, 1.83, 0.03)


def test_parse_xctest_and_xcresult():
    rows = devices.parse_xctest_log(_fx("xctest_stdout.txt"))
    assert len(rows) == 1
    assert rows[0]["test"] == "test_mobilevit_xs_256_executorch_fp32" and rows[0]["metric"] == "Clock Monotonic Time, s"
    assert rows[0]["values"] == [0.007123, 0.00701, 0.00699, 0.007201, 0.00705] and rows[0]["rsd_percent"] == 2.301
    m = devices.parse_xcresult_metrics(_fx("xcresult_metrics.json"))
    assert [r["test"] for r in m] == ["LatencyTests/test_mobilevit_xs_256_executorch_fp32",
                                      "LatencyTests/test_mobilevit_xs_256_coreml_fp32_cpu_and_ne"]
    assert m[0]["unit"] == "s" and m[0]["device_name"] == "iPhone 15 Pro"
    assert devices.to_ms(m[0]["measurements"], m[0]["unit"]) == pytest.approx([7.1234, 7.0101, 6.9905, 7.2012, 7.0507])
    with pytest.raises(DeviceError, match="unit"):
        devices.to_ms([1.0], "furlongs")


def test_parse_device_info():
    props = devices.parse_getprop(_fx("getprop.txt"))
    assert props["ro.product.model"] == "Pixel 8" and props["ro.soc.model"] == "Tensor G3"
    th = devices.parse_thermal(_fx("dumpsys_thermalservice.txt"))
    assert th["status"] == 0 and th["temperatures_c"] == {"cpu-0-0": 36.2, "big-core": 41.9, "battery": 33.1}
    assert devices.parse_cpufreq(_fx("cpufreq.txt")) == {"cpu0": 1704000, "cpu1": 1704000, "cpu4": 2367000,
                                                         "cpu8": 2914000}
    assert devices.parse_adb_devices(_fx("adb_devices.txt")) == ["39281FDJH00ABC"]
    assert devices.parse_adb_devices(_fx("adb_devices_empty.txt")) == []
    assert devices.parse_xctrace_devices(_fx("xctrace_devices.txt")) == [
        {"name": "iPhone 15 Pro", "os_version": "18.2", "udid": "00008120-001A2B3C4D5E6F70"}]


def test_statistics_extend_compute_stats():
    xs = [4.0, 1.0, 3.0, 2.0, 5.0, 10.0, 6.0, 7.0, 8.0, 9.0]
    s = statistics(xs)
    assert {k: s[k] for k in compute_stats(xs)} == compute_stats(xs)
    assert s["p10_ms"] == pytest.approx(1.9) and s["min_ms"] == 1.0 and s["max_ms"] == 10.0
    assert s["mean_ms"] == 5.5


# --------------------------------------------------------------------------------------------
# stand-in tools on PATH
# --------------------------------------------------------------------------------------------

FAKE_TOOL = r'''#!{python}
import json, os, re, sys
fix, log = os.environ["FAKE_FIX"], os.environ["FAKE_LOG"]
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(log, "a") as f:
    f.write(json.dumps([name] + args) + "\n")
def out(fname):
    sys.stdout.write(open(os.path.join(fix, fname)).read())
if name == "adb":
    if args[:1] == ["devices"]:
        out(os.environ.get("FAKE_ADB_DEVICES", "adb_devices.txt")); sys.exit(0)
    if args[:1] == ["-s"]:
        args = args[2:]
    if args[0] == "push":
        sys.exit(0)
    cmd = " ".join(args[1:])
    if cmd == "getprop":
        out("getprop.txt")
    elif cmd.startswith("dumpsys thermalservice"):
        out("dumpsys_thermalservice.txt")
    elif "scaling_cur_freq" in cmd:
        out("cpufreq.txt")
    elif "executor_runner --model_path" in cmd:
        n = int(re.search(r"--num_executions=(\d+)", cmd).group(1))
        if n == 5:
            out("executor_runner_posix.txt")
        else:
            print("I 00:00:00.000100 executorch:executor_runner.cpp:626] Model loaded in 3.500000 ms.")
            print("I 00:00:00.000200 executorch:executor_runner.cpp:781] Iteration 1 of 1: 2.500000 ms")
    elif "benchmark_model --graph" in cmd:
        out("benchmark_model_classic.txt")
    elif cmd.startswith("am start"):
        print("Starting: Intent { cmp=org.mobilevits.demo/.BenchActivity }\nStatus: ok\nLaunchState: COLD")
    elif cmd.startswith("run-as") and cmd.endswith(".error.json"):
        sys.exit(1)
    elif cmd.startswith("run-as"):
        sys.stdout.write(open(os.environ["FAKE_APP_JSON"]).read())
elif name == "xcrun":
    if args[:3] == ["xctrace", "list", "devices"]:
        out("xctrace_devices.txt")
    elif args[:3] == ["xcresulttool", "get", "test-results"]:
        out("xcresult_metrics.json")
    else:
        sys.exit(1)
elif name == "xcodebuild":
    out("xctest_stdout.txt")
'''


@pytest.fixture
def tools(tmp_path, monkeypatch):
    """adb, xcrun and xcodebuild stand-ins first on PATH; returns a reader of their logged argv."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("adb", "xcrun", "xcodebuild"):
        p = bindir / name
        p.write_text(FAKE_TOOL.replace("{python}", sys.executable))
        p.chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_FIX", str(FIX))
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("ADB", raising=False)
    monkeypatch.delenv("MOBILEVITS_EXECUTOR_RUNNER", raising=False)
    monkeypatch.delenv("MOBILEVITS_BENCHMARK_MODEL", raising=False)

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    return calls


def _fake_artifact(tmp_path: Path, stem: str, backend: str, suffix: str) -> Path:
    art = tmp_path / f"{stem}{suffix}"
    art.write_bytes(b"fake " + backend.encode())
    res = 256
    meta = {"format": SIDECAR_FORMAT, "artifact": art.name, "backend": backend, "precision": "fp32",
            "delegate": "xnnpack", "source": {"name": "mobilevit_xs", "num_classes": 1000, "resolution": res},
            "model": {"name": "mobilevit_xs"}, "input": {"shape": [1, 3, res, res]}}
    Path(f"{art}.json").write_text(json.dumps(meta))
    return art


def _binary(tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    p.write_bytes(b"\x7fELF fake")
    return p


def test_adb_executor_runner_flow(tmp_path, tools):
    pte = _fake_artifact(tmp_path, "mobilevit_xs_256_executorch_fp32", "executorch", ".pte")
    runner = _binary(tmp_path, "executor_runner")
    r = bench([pte], device="adb", threads=[4], warmup=2, iterations=3, cooldown=0, cpu_mask="f0",
              executor_runner=str(runner), out=tmp_path / "out", csv_path=tmp_path / "b.csv")
    calls = tools()
    pushes = [c[4:] for c in calls if c[:2] == ["adb", "-s"] and c[3] == "push"]
    assert [str(runner), "/data/local/tmp/mobilevits/executor_runner"] in pushes
    assert [str(pte), "/data/local/tmp/mobilevits/mobilevit_xs_256_executorch_fp32.pte"] in pushes
    assert all(c[1:3] == ["-s", "39281FDJH00ABC"] for c in calls if c[0] == "adb" and c[1] != "devices")
    runs = [c[4] for c in calls if c[:2] == ["adb", "-s"] and c[3] == "shell" and "--model_path" in c[4]]
    assert len(runs) == 2
    assert runs[0].startswith("taskset f0 /data/local/tmp/mobilevits/executor_runner ")
    assert "--cpu_threads=4" in runs[0] and "--num_executions=5" in runs[0] and "--print_output=none" in runs[0]
    assert "--num_executions=1" in runs[1]
    (cell,) = r["cells"]
    assert cell["route"] == "executor_runner" and cell["threads"] == 4 and cell["cpu_mask"] == "f0"
    assert cell["samples_ms"] == pytest.approx([2.1, 2.2, 2.05])  # the first 2 of 5 dropped as warm-up
    assert cell["first_inference_ms"] == pytest.approx(9.876543)
    assert cell["load_ms_cold"] == pytest.approx(12.345678) and cell["load_ms_warm"] == 3.5
    assert cell["stats"]["median_ms"] == pytest.approx(2.1) and cell["actual_threads"] == 4
    assert r["device"]["model"] == "Pixel 8" and r["device"]["soc"] == "Tensor G3" and r["device"]["os_version"] == "15"
    assert cell["device_state_before"]["thermal"]["status"] == 0
    assert cell["device_state_after"]["cpufreq_khz"]["cpu8"] == 2914000
    rows = list(csv.DictReader((tmp_path / "b.csv").open()))
    assert len(rows) == 1 and float(rows[0]["median_ms"]) == pytest.approx(2.1)
    assert "Pixel 8" in format_table(r)


def test_adb_benchmark_model_flow(tmp_path, tools, monkeypatch):
    tfl = _fake_artifact(tmp_path, "mobilevit_xs_256_tflite_fp32", "tflite", ".tflite")
    monkeypatch.setenv("MOBILEVITS_BENCHMARK_MODEL", str(_binary(tmp_path, "benchmark_model")))
    r = bench([tfl], device="adb:39281FDJH00ABC", threads=[1, 2], warmup=10, iterations=100, cooldown=0,
              out=tmp_path / "out")
    runs = [c[4] for c in tools() if c[:2] == ["adb", "-s"] and c[3] == "shell" and "--graph=" in c[4]]
    assert len(runs) == 2 and sorted("--num_threads=1" in x for x in runs) == [False, True]
    for x in runs:
        assert x.startswith("/data/local/tmp/mobilevits/benchmark_model --graph=/data/local/tmp/mobilevits/")
        assert "--warmup_runs=10 --warmup_min_secs=0 --num_runs=100 --min_secs=0" in x
    assert len(r["cells"]) == 2 and len(r["order"]) == 2
    cell = r["cells"][0]
    assert cell["samples_ms"] == [] and cell["stats"]["mean_ms"] == pytest.approx(1.6902)
    assert cell["stats"]["median_ms"] is None and cell["first_inference_ms"] == pytest.approx(4.569)
    assert cell["load_ms_cold"] == pytest.approx(123.456)


def test_adb_errors(tmp_path, tools, monkeypatch):
    pte = _fake_artifact(tmp_path, "m_256_executorch_fp32", "executorch", ".pte")
    with pytest.raises(DeviceError, match="MOBILEVITS_EXECUTOR_RUNNER.*docs/latency.md"):
        bench([pte], device="adb", cooldown=0, out=tmp_path / "o")
    with pytest.raises(DeviceError, match="not found at"):
        bench([pte], device="adb", cooldown=0, executor_runner=str(tmp_path / "nope"), out=tmp_path / "o")
    with pytest.raises(DeviceError, match="not attached"):
        bench([pte], device="adb:OTHER", cooldown=0, out=tmp_path / "o")
    monkeypatch.setenv("FAKE_ADB_DEVICES", "adb_devices_empty.txt")
    with pytest.raises(DeviceError, match="no device attached"):
        bench([pte], device="adb", cooldown=0, out=tmp_path / "o")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DeviceError, match="adb not found"):
        bench([pte], device="adb", cooldown=0, out=tmp_path / "o")


def test_android_app_route(tmp_path, tools, monkeypatch):
    samples = [4.2, 4.0, 4.1]
    obj = {"schema_version": 1, "app": "android_demo",
           "device": {"model": "Pixel 8", "os": "Android", "os_version": "15", "soc": "Tensor G3"},
           "model": "m_96_tflite_fp32", "artifact": "m_96_tflite_fp32.tflite", "backend": "tflite",
           "precision": "fp32", "compute_units": None, "threads": 2, "warmup": 1, "iterations": 3,
           "load_ms_cold": 30.0, "load_ms_warm": 10.0, "first_inference_ms": 9.0, "samples_ms": samples,
           "stats": compute_stats(samples), "top1": {"index": 1, "label": "x", "expected_index": 1, "matches": True},
           "timestamp": "2026-11-22T02:04:42Z"}
    (tmp_path / "app.json").write_text(json.dumps(obj))
    monkeypatch.setenv("FAKE_APP_JSON", str(tmp_path / "app.json"))
    models = tmp_path / "models"
    models.mkdir()
    res = devices.run_android_app(devices.Adb(), models, "m_96_tflite_fp32", threads=2, warmup=1, iterations=3,
                                  poll_seconds=0)
    assert res["samples_ms"] == samples
    shell = [c[4] for c in tools() if c[:2] == ["adb", "-s"] and c[3] == "shell"]
    assert ("am start -W -S -n org.mobilevits.demo/.BenchActivity --es model m_96_tflite_fp32 --ei threads 2 "
            "--ei warmup 1 --ei iterations 3 --es models_dir /data/local/tmp/mobilevits/app_models") in shell
    assert "run-as org.mobilevits.demo cat files/bench/m_96_tflite_fp32.json" in shell


def test_ios_needs_macos(tmp_path, tools, monkeypatch):
    monkeypatch.setattr(devices, "is_macos", lambda: False)
    pte = _fake_artifact(tmp_path, "mobilevit_xs_256_executorch_fp32", "executorch", ".pte")
    with pytest.raises(DeviceError, match="need macOS"):
        bench([pte], device="ios", xctestrun="x.xctestrun", cooldown=0, out=tmp_path / "o")


def test_ios_xctest_flow(tmp_path, tools, monkeypatch):
    monkeypatch.setattr(devices, "is_macos", lambda: True)
    pte = _fake_artifact(tmp_path, "mobilevit_xs_256_executorch_fp32", "executorch", ".pte")
    with pytest.raises(DeviceError, match="--xctestrun"):
        bench([pte], device="ios", cooldown=0, out=tmp_path / "o")
    xctestrun = tmp_path / "App.xctestrun"
    xctestrun.write_text("<plist/>")
    r = bench([pte], device="ios", xctestrun=str(xctestrun), warmup=5, iterations=5, out=tmp_path / "o")
    (build,) = [c for c in tools() if c[0] == "xcodebuild"]
    assert build[1:7] == ["test-without-building", "-xctestrun", str(xctestrun), "-destination",
                          "id=00008120-001A2B3C4D5E6F70", "-resultBundlePath"]
    assert "TEST_RUNNER_MOBILEVITS_ITERATIONS=5" in build
    assert "TEST_RUNNER_MOBILEVITS_MODELS=mobilevit_xs_256_executorch_fp32" in build
    (cell,) = r["cells"]
    assert cell["route"] == "xctest" and cell["threads"] is None
    assert cell["samples_ms"] == pytest.approx([7.1234, 7.0101, 6.9905, 7.2012, 7.0507])
    assert cell["stats"]["median_ms"] == pytest.approx(7.0507)
    assert r["device"]["model"] == "iPhone 15 Pro" and r["device"]["os_version"] == "18.2"


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="artifacts"):
        bench(out=tmp_path)
    with pytest.raises(ValueError, match="unknown runtime"):
        bench(models="mobilenetv3_small_075", runtime="onnx", out=tmp_path)
    with pytest.raises(ValueError, match="--device"):
        bench(models="mobilenetv3_small_075", device="usb", out=tmp_path)


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs on macOS")
def test_coreml_needs_macos(tmp_path):
    with pytest.raises(RuntimeUnavailableError, match="coreml cannot time artifacts on this host: .*need macOS"):
        bench(models="mobilenetv3_small_075", resolutions="96", runtime="coreml", out=tmp_path)


# --------------------------------------------------------------------------------------------
# host smoke (structure only, never durations)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_host_smoke(tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    r = bench(models="mobilenetv3_small_075", resolutions="96", runtime="tflite,torch", threads=[1], warmup=1,
              iterations=3, cooldown=0, out=tmp_path / "art", csv_path=tmp_path / "b.csv", plot=tmp_path / "b.png")
    assert sorted(c["runtime"] for c in r["cells"]) == ["tflite", "torch"]
    assert sorted(r["order"]) == sorted(c["id"] for c in r["cells"])
    for c in r["cells"]:
        assert len(c["samples_ms"]) == 3 and c["route"] == "host-python"
        assert set(c["stats"]) >= {"median_ms", "p90_ms", "trimmed_mean_ms", "cv", "p10_ms", "std_ms"}
        assert c["load_ms_cold"] is not None and c["first_inference_ms"] is not None
    assert r["environment"]["tool_versions"]["torch"]
    assert len(list(csv.DictReader((tmp_path / "b.csv").open()))) == 2
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from mobilevits.workflows.cli import main

    (tfl,) = [c["artifact"] for c in r["cells"] if c["runtime"] == "tflite"]
    capsys.readouterr()
    assert main(["bench", tfl, "--iterations", "2", "--warmup", "0", "--cooldown", "0", "--json",
                 "--threads", "1,2", "--csv", str(tmp_path / "c.csv")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["cells"]) == 2 and {c["threads"] for c in out["cells"]} == {1, 2}
    assert all(len(c["samples_ms"]) == 2 for c in out["cells"])
    assert main(["bench", tfl, "--iterations", "2", "--cooldown", "0"]) == 0
    assert "tflite" in capsys.readouterr().out
    assert main(["bench", tfl, "--device", "ios", "--cooldown", "0"]) != 0 or sys.platform == "darwin"


def test_host_table_names_the_isa_and_warns_int8_without_dot_product():
    def result(isa, precision):
        cell = {"model": "m", "resolution": 96, "runtime": "executorch", "precision": precision, "threads": 1,
                "stats": {"median_ms": 2.0, "p90_ms": 2.5, "cv": 0.01}}
        return {"environment": {"cpu": "AMD EPYC", "cpu_isa": isa}, "device": {"kind": "host"}, "cells": [cell],
                "settings": {"warmup": 1, "iterations": 2, "seed": 0}}

    text = format_table(result(["avx2", "fma"], "int8"))
    assert text.startswith("host AMD EPYC (avx2+fma);") and "no int8 dot-product instructions" in text
    assert "dot-product" not in format_table(result(["avx2", "fma", "avx512_vnni"], "int8"))
    assert "dot-product" not in format_table(result(["avx2", "fma"], "fp32"))  # nothing to say about fp32
    assert "dot-product" not in format_table(result(["asimd", "asimddp"], "int8"))
    assert "dot-product" not in format_table(result([], "int8"))  # unknown ISA: no claim

"""Phones for the latency harness: adb (Android) and xcodebuild/xcrun (iOS) flows, and parsers of the tools' output.

Output formats are described in docs/latency.md (``executor_runner``, LiteRT ``benchmark_model``, XCTest and
``xcresulttool``). Every external command goes through :func:`_run`, so tests can stand in
scripts named ``adb``, ``xcrun`` and ``xcodebuild`` on ``PATH``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from converters import RuntimeUnavailableError

REMOTE_DIR = "/data/local/tmp/mobilevits"
APP_PACKAGE = "org.mobilevits.demo"
APP_BENCH_ACTIVITY = f"{APP_PACKAGE}/.BenchActivity"

HOW_TO_GET_EXECUTOR_RUNNER = (
    "build ExecuTorch's executor_runner for Android with the posix PAL so timings reach stdout "
    "(cmake . --preset android-arm64-v8a -DCMAKE_TOOLCHAIN_FILE=$ANDROID_NDK/build/cmake/android.toolchain.cmake "
    "-DANDROID_PLATFORM=android-28 -DCMAKE_BUILD_TYPE=Release -DEXECUTORCH_PAL_DEFAULT=posix "
    "-DEXECUTORCH_BUILD_EXECUTOR_RUNNER=ON -DEXECUTORCH_BUILD_EXTENSION_EVALUE_UTIL=ON -DEXECUTORCH_BUILD_XNNPACK=ON "
    "-Bcmake-out-android && cmake --build cmake-out-android -j --target install), then pass "
    "--executor-runner cmake-out-android/executor_runner or set $MOBILEVITS_EXECUTOR_RUNNER "
    "(see docs/latency.md, executor_runner); or use --app to time with the android_demo bench mode")
HOW_TO_GET_BENCHMARK_MODEL = (
    "download LiteRT's prebuilt benchmark_model (https://storage.googleapis.com/tensorflow-nightly-public/prod/"
    "tensorflow/release/lite/tools/nightly/latest/android_aarch64_benchmark_model) or build it with "
    "`bazel build -c opt --config=android_arm64 //tflite/tools/benchmark:benchmark_model`, then pass "
    "--benchmark-model PATH or set $MOBILEVITS_BENCHMARK_MODEL (see docs/latency.md, benchmark_model); "
    "or use --app to time with the android_demo bench mode")


class DeviceError(RuntimeUnavailableError):
    """A phone, a tool or a binary the harness needs is missing, or a device command failed."""


# --------------------------------------------------------------------------------------------
# parsers (pure functions over the exact output formats in docs/latency.md)
# --------------------------------------------------------------------------------------------

ET_LOAD = re.compile(r"Model loaded in ([0-9.]+) ms\.")
ET_ITER = re.compile(r"Iteration (\d+) of (\d+): ([0-9.]+) ms")
ET_TOTAL = re.compile(r"Model executed successfully (\d+) time\(s\) in ([0-9.]+) ms\.")
ET_THREADS = re.compile(r"Resetting threadpool with num threads = (\d+)")

TFL_SUMMARY = re.compile(r"Inference timings in us: Init: ([0-9.e+]+), First inference: ([0-9.e+]+), "
                         r"Warmup \(avg\): ([0-9.e+]+), Inference \(avg\): ([0-9.e+]+)")
TFL_STAT = re.compile(r"count=(\d+)(?: first=(\d+))? curr=(\d+)(?:\(all same\))?"
                      r"(?: min=(\d+) max=(\d+) avg=([0-9.e+]+) std=(\d+))?")
LRT_LINES = {
    "init_ms": re.compile(r"Model initialization:\s+([0-9.]+) ms"),
    "first_ms": re.compile(r"Warmup \(first\):\s+([0-9.]+) ms"),
    "warmup_avg_ms": re.compile(r"Warmup \(avg\):\s+([0-9.]+) ms"),
    "avg_ms": re.compile(r"Inference \(avg\):\s+([0-9.]+) ms"),
    "min_ms": re.compile(r"Inference \(min\):\s+([0-9.]+) ms"),
    "max_ms": re.compile(r"Inference \(max\):\s+([0-9.]+) ms"),
    "std_ms": re.compile(r"Inference \(std\):\s+([0-9.]+)"),
}
LRT_RUNS = re.compile(r"Inference \(avg\):\s+([0-9.]+) ms \((\d+) runs\)")

XCT = re.compile(r"Test Case '-\[(\S+) (\S+)\]' measured \[([^\]]+)\] average: ([0-9.]+), "
                 r"relative standard deviation: ([0-9.]+)%, values: \[([^\]]*)\]")


def parse_executor_runner(text: str) -> dict[str, Any]:
    """Timings from ExecuTorch ``executor_runner`` output (posix PAL stdout or ``logcat -s ExecuTorch``).

    Returns ``load_ms``, ``samples_ms`` (every iteration in run order, the first one included: the
    runner has no warm-up), ``executions``, ``total_ms`` and ``threads`` (None when not printed).
    """
    load = ET_LOAD.search(text)
    iters = sorted((int(m.group(1)), float(m.group(3))) for m in ET_ITER.finditer(text))
    total = ET_TOTAL.search(text)
    if load is None or not iters:
        tail = "\n".join(text.strip().splitlines()[-5:])
        raise DeviceError("executor_runner printed no timings (is it built with -DEXECUTORCH_PAL_DEFAULT=posix and "
                          f"logging on? see docs/latency.md, executor_runner); last lines:\n{tail}")
    thr = ET_THREADS.search(text)
    return {"load_ms": float(load.group(1)), "samples_ms": [v for _, v in iters],
            "executions": int(total.group(1)) if total else len(iters),
            "total_ms": float(total.group(2)) if total else None,
            "threads": int(thr.group(1)) if thr else None}


def parse_benchmark_model(text: str) -> dict[str, Any]:
    """Timings from LiteRT ``benchmark_model`` (classic Interpreter tool or the CompiledModel tool), in ms.

    The tools print no per-iteration samples: only ``avg_ms``/``std_ms``/``min_ms``/``max_ms`` of the timed
    runs, ``first_ms`` (first inference), ``init_ms`` (load) and ``warmup_avg_ms``.
    """
    m = TFL_SUMMARY.search(text)
    if m:
        init_us, first_us, warm_us, avg_us = (float(g) for g in m.groups())
        stats = [s for s in TFL_STAT.finditer(text)]
        out: dict[str, Any] = {"tool": "benchmark_model", "init_ms": init_us / 1e3, "first_ms": first_us / 1e3,
                               "warmup_avg_ms": warm_us / 1e3, "avg_ms": avg_us / 1e3, "runs": None,
                               "min_ms": None, "max_ms": None, "std_ms": None, "warmup_runs": None}
        if len(stats) >= 2:  # the second count= line is the timed run
            w, r = stats[0], stats[1]
            out["warmup_runs"] = int(w.group(1))
            out["runs"] = int(r.group(1))
            if r.group(4) is not None:
                out.update(min_ms=float(r.group(4)) / 1e3, max_ms=float(r.group(5)) / 1e3,
                           std_ms=float(r.group(7)) / 1e3)
            else:  # "count=N curr=X(all same)"
                out.update(min_ms=float(r.group(3)) / 1e3, max_ms=float(r.group(3)) / 1e3, std_ms=0.0)
        return out
    runs = LRT_RUNS.search(text)
    if runs:
        out = {"tool": "benchmark_model (CompiledModel)", "runs": int(runs.group(2)), "warmup_runs": None}
        for key, rx in LRT_LINES.items():
            mm = rx.search(text)
            out[key] = float(mm.group(1)) if mm else None
        wr = re.search(r"Warmup \(avg\):\s+[0-9.]+ ms \((\d+) runs\)", text)
        out["warmup_runs"] = int(wr.group(1)) if wr else None
        return out
    tail = "\n".join(text.strip().splitlines()[-5:])
    raise DeviceError(f"benchmark_model printed no timing summary; last lines:\n{tail}")


def parse_xctest_log(text: str) -> list[dict[str, Any]]:
    """XCTest ``measured [...]`` lines from xcodebuild stdout: class, test, metric and the full ``values``.

    Use ``values`` (6 decimals), never ``average`` (printed to 1 ms).
    """
    out = []
    for m in XCT.finditer(text):
        values = [float(v) for v in m.group(6).split(",") if v.strip()]
        out.append({"class": m.group(1), "test": m.group(2), "metric": m.group(3), "average": float(m.group(4)),
                    "rsd_percent": float(m.group(5)), "values": values})
    return out


def parse_xcresult_metrics(text: str) -> list[dict[str, Any]]:
    """``xcrun xcresulttool get test-results metrics --compact`` JSON flattened to one row per test run and metric."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DeviceError(f"xcresulttool metrics output is not JSON ({e})") from None
    rows = []
    for test in data:
        for run in test.get("testRuns", []):
            dev = run.get("device") or {}
            for metric in run.get("metrics", []):
                rows.append({"test": test.get("testIdentifier"), "device_id": dev.get("deviceId"),
                             "device_name": dev.get("deviceName"), "metric": metric.get("identifier"),
                             "display_name": metric.get("displayName"), "unit": metric.get("unitOfMeasurement"),
                             "measurements": [float(v) for v in metric.get("measurements", [])]})
    return rows


def to_ms(values: list[float], unit: str | None) -> list[float]:
    """Convert XCTest measurements to milliseconds (``s``, ``ms``, ``us``)."""
    scale = {"s": 1e3, "ms": 1.0, "us": 1e-3, "µs": 1e-3}.get((unit or "s").strip().lower())
    if scale is None:
        raise DeviceError(f"unknown time unit {unit!r} in xcresult metrics")
    return [v * scale for v in values]


def parse_getprop(text: str) -> dict[str, str]:
    """``adb shell getprop`` listing (``[key]: [value]`` lines) as a dict."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^\[([^\]]+)\]: \[([^\]]*)\]", text, re.M)}


def parse_thermal(text: str) -> dict[str, Any]:
    """``dumpsys thermalservice``: the overall status and the HAL's current temperatures (°C) by sensor."""
    status = re.search(r"Thermal Status:\s*(\d+)", text)
    block = text.split("Current temperatures from HAL:", 1)
    temps_text = block[1] if len(block) > 1 else text
    temps = {m.group(2): float(m.group(1))
             for m in re.finditer(r"Temperature\{mValue=([-0-9.]+), mType=\d+, mName=([^,]+),", temps_text)}
    return {"status": int(status.group(1)) if status else None, "temperatures_c": temps}


def parse_cpufreq(text: str) -> dict[str, int]:
    """``grep . /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq`` output as {cpuN: kHz}."""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"/(cpu\d+)/cpufreq/scaling_cur_freq:(\d+)", text)}


def parse_adb_devices(text: str) -> list[str]:
    """Serials of the devices in state ``device`` from ``adb devices -l``."""
    serials = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "device":
            serials.append(parts[0])
    return serials


def parse_xctrace_devices(text: str) -> list[dict[str, str]]:
    """Physical iOS devices from ``xcrun xctrace list devices`` (the host Mac, without an OS version, is skipped)."""
    section = text.split("== Simulators ==")[0]
    out = []
    for m in re.finditer(r"^(.+?) \(([0-9.]+)\) \(([0-9A-Fa-f-]+)\)\s*$", section, re.M):
        out.append({"name": m.group(1), "os_version": m.group(2), "udid": m.group(3)})
    return out


# --------------------------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------------------------


def _run(argv: list[str], timeout: float = 600.0, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise DeviceError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise DeviceError(f"`{shlex.join(argv)}` did not finish in {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        msg = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
        raise DeviceError(f"`{shlex.join(argv)}` failed (exit {proc.returncode}): {' | '.join(msg)}")
    return proc


def find_tool(explicit: str | None, env: str, how: str, what: str) -> Path:
    """A host-side file given by flag or environment variable; raises :class:`DeviceError` with ``how`` if missing."""
    value = explicit or os.environ.get(env)
    if not value:
        raise DeviceError(f"{what} is needed and was not given: {how}")
    p = Path(value).expanduser()
    if not p.is_file():
        raise DeviceError(f"{what} not found at {p}: {how}")
    return p


class Adb:
    """One Android device over adb (``$ADB`` or ``adb`` on PATH)."""

    def __init__(self, serial: str | None = None) -> None:
        exe = os.environ.get("ADB") or shutil.which("adb")
        if not exe:
            raise DeviceError("adb not found: install Android platform-tools (https://developer.android.com/tools/"
                              "releases/platform-tools) and put adb on PATH, or set $ADB")
        self.exe = exe
        serials = parse_adb_devices(_run([exe, "devices", "-l"], timeout=60).stdout)
        if not serials:
            raise DeviceError("no device attached (`adb devices` lists none in state 'device'; check the cable, "
                              "USB debugging and the authorisation prompt)")
        if serial is None:
            if len(serials) > 1:
                raise DeviceError(f"{len(serials)} devices attached ({', '.join(serials)}): pick one with "
                                  "--device adb:SERIAL")
            serial = serials[0]
        elif serial not in serials:
            raise DeviceError(f"device {serial} is not attached (attached: {', '.join(serials)})")
        self.serial = serial

    def cmd(self, *args: str, timeout: float = 600.0, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``adb -s SERIAL ARGS...``."""
        return _run([self.exe, "-s", self.serial, *args], timeout=timeout, check=check)

    def shell(self, command: str, timeout: float = 600.0, check: bool = True) -> str:
        """Run one shell command line on the device; returns stdout."""
        return self.cmd("shell", command, timeout=timeout, check=check).stdout

    def push(self, local: str | Path, remote: str) -> None:
        """Copy a file or folder to the device."""
        self.cmd("push", str(local), remote, timeout=900)


def android_info(adb: Adb) -> dict[str, Any]:
    """Model, Android version, SoC and ABI from getprop."""
    props = parse_getprop(adb.shell("getprop", timeout=60))
    return {"serial": adb.serial, "os": "Android", "model": props.get("ro.product.model"),
            "manufacturer": props.get("ro.product.manufacturer"),
            "os_version": props.get("ro.build.version.release"), "api_level": props.get("ro.build.version.sdk"),
            "soc": props.get("ro.soc.model") or props.get("ro.board.platform"),
            "board": props.get("ro.board.platform"), "abi": props.get("ro.product.cpu.abi")}


def android_state(adb: Adb) -> dict[str, Any]:
    """Thermal state and current CPU frequencies (taken before and after each cell)."""
    thermal_text = adb.shell("dumpsys thermalservice", timeout=60, check=False)
    thermal = parse_thermal(thermal_text)
    if thermal["status"] is None and not thermal["temperatures_c"]:  # no thermalservice: read the sysfs zones
        zones = adb.shell("for z in /sys/class/thermal/thermal_zone*; do echo \"$(cat $z/type):$(cat $z/temp)\"; "
                          "done", timeout=60, check=False)
        temps = {}
        for line in zones.splitlines():
            name, _, val = line.rpartition(":")
            if name and val.strip().lstrip("-").isdigit():
                v = int(val)
                temps[name] = v / 1000.0 if abs(v) > 1000 else float(v)
        thermal = {"status": None, "temperatures_c": temps}
    freqs = parse_cpufreq(adb.shell("grep . /sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq",
                                    timeout=60, check=False))
    return {"thermal": thermal, "cpufreq_khz": freqs, "time": time.time()}


def _taskset(mask: str | None) -> str:
    return f"taskset {mask} " if mask else ""


def run_executor_runner(adb: Adb, artifact: Path, runner: Path, threads: int, warmup: int, iterations: int,
                        cpu_mask: str | None = None) -> dict[str, Any]:
    """Time a ``.pte`` with ExecuTorch's ``executor_runner`` on the device.

    Two processes: the first loads the program cold and runs ``warmup + iterations`` times (its first
    iteration is the first inference, the first ``warmup`` are dropped); a second one-execution process
    gives the warm load (file now in the page cache).
    """
    remote_runner = f"{REMOTE_DIR}/executor_runner"
    remote_model = f"{REMOTE_DIR}/{artifact.name}"
    adb.shell(f"mkdir -p {REMOTE_DIR}")
    adb.push(runner, remote_runner)
    adb.shell(f"chmod +x {remote_runner}")
    adb.push(artifact, remote_model)
    base = (f"{_taskset(cpu_mask)}{remote_runner} --model_path={remote_model} --cpu_threads={int(threads)} "
            "--print_output=none")
    first = parse_executor_runner(adb.shell(f"{base} --num_executions={warmup + iterations} 2>&1"))
    if len(first["samples_ms"]) < warmup + iterations:
        raise DeviceError(f"executor_runner printed {len(first['samples_ms'])} iterations, expected "
                          f"{warmup + iterations}")
    second = parse_executor_runner(adb.shell(f"{base} --num_executions=1 2>&1"))
    return {"route": "executor_runner", "load_ms_cold": first["load_ms"], "load_ms_warm": second["load_ms"],
            "first_inference_ms": first["samples_ms"][0], "samples_ms": first["samples_ms"][warmup:],
            "actual_threads": first["threads"], "command": base}


def run_benchmark_model(adb: Adb, artifact: Path, tool: Path, threads: int, warmup: int, iterations: int,
                        cpu_mask: str | None = None) -> dict[str, Any]:
    """Time a ``.tflite`` with LiteRT's ``benchmark_model`` on the device (summary statistics only)."""
    remote_tool = f"{REMOTE_DIR}/benchmark_model"
    remote_model = f"{REMOTE_DIR}/{artifact.name}"
    adb.shell(f"mkdir -p {REMOTE_DIR}")
    adb.push(tool, remote_tool)
    adb.shell(f"chmod +x {remote_tool}")
    adb.push(artifact, remote_model)
    command = (f"{_taskset(cpu_mask)}{remote_tool} --graph={remote_model} --num_threads={int(threads)} "
               f"--warmup_runs={max(int(warmup), 1)} --warmup_min_secs=0 --num_runs={int(iterations)} --min_secs=0")
    parsed = parse_benchmark_model(adb.shell(f"{command} 2>&1"))
    return {"route": "benchmark_model", "load_ms_cold": parsed["init_ms"], "load_ms_warm": None,
            "first_inference_ms": parsed["first_ms"], "samples_ms": [], "summary": parsed, "command": command}


def run_android_app(adb: Adb, models_dir: Path, model: str, threads: int, warmup: int, iterations: int,
                    poll_seconds: float = 2.0, timeout: float = 900.0) -> dict[str, Any]:
    """Time one manifest entry with the android_demo bench mode; returns the validated bench JSON.

    ``models_dir`` is a folder written by ``export_app_assets(..., dest=...)``; it is pushed to the device
    and passed as ``models_dir`` so the APK needs no rebuild.
    """
    from .app_assets import BenchResultError, parse_bench_result

    remote = f"{REMOTE_DIR}/app_models"
    adb.shell(f"rm -rf {remote} && mkdir -p {REMOTE_DIR}")
    adb.push(models_dir, remote)
    out = adb.shell(f"am start -W -S -n {APP_BENCH_ACTIVITY} --es model {model} --ei threads {int(threads)} "
                    f"--ei warmup {int(warmup)} --ei iterations {int(iterations)} --es models_dir {remote}")
    if "Error" in out:
        raise DeviceError(f"am start failed (is the android_demo benchmark APK installed? see android_demo/README.md):"
                          f" {out.strip()}")
    deadline = time.monotonic() + timeout
    while True:
        text = adb.cmd("shell", f"run-as {APP_PACKAGE} cat files/bench/{model}.json", check=False).stdout
        if text.strip().startswith("{"):
            try:
                return parse_bench_result(text, source=f"files/bench/{model}.json")
            except BenchResultError:
                pass  # written atomically, so this is a real error unless the read raced a restart
        err = adb.cmd("shell", f"run-as {APP_PACKAGE} cat files/bench/{model}.error.json", check=False).stdout
        if err.strip().startswith("{"):
            raise DeviceError(f"android_demo bench failed for {model}: {err.strip()}")
        if time.monotonic() > deadline:
            raise DeviceError(f"android_demo wrote no files/bench/{model}.json within {timeout:.0f} s")
        time.sleep(poll_seconds)


# --------------------------------------------------------------------------------------------
# iOS
# --------------------------------------------------------------------------------------------


def is_macos() -> bool:
    """True on macOS (tests patch this)."""
    return sys.platform == "darwin"


def require_xcode() -> str:
    """Path of xcrun; raises :class:`DeviceError` off macOS or without the Xcode command-line tools."""
    if not is_macos():
        raise DeviceError("iOS benchmarks need macOS with Xcode (xcodebuild, xcrun); this host is "
                          f"{sys.platform}")
    exe = shutil.which("xcrun")
    if not exe or not shutil.which("xcodebuild"):
        raise DeviceError("xcrun/xcodebuild not found: install Xcode and run `xcode-select --install`")
    return exe


def ios_devices() -> list[dict[str, str]]:
    """Attached iOS devices (``xcrun xctrace list devices``)."""
    require_xcode()
    return parse_xctrace_devices(_run(["xcrun", "xctrace", "list", "devices"], timeout=120).stdout)


def pick_ios_device(udid: str | None) -> dict[str, str]:
    """The device with ``udid``, or the only attached one."""
    devices = ios_devices()
    if udid:
        for d in devices:
            if d["udid"] == udid:
                return d
        raise DeviceError(f"iOS device {udid} is not attached (attached: "
                          f"{', '.join(d['udid'] for d in devices) or 'none'})")
    if not devices:
        raise DeviceError("no iOS device attached (`xcrun xctrace list devices` lists none)")
    if len(devices) > 1:
        raise DeviceError(f"{len(devices)} iOS devices attached: pick one with --device ios:UDID")
    return devices[0]


def run_ios_xctest(xctestrun: Path, udid: str, warmup: int, iterations: int, models: list[str] | None = None,
                   work: Path | None = None) -> dict[str, Any]:
    """Run the ios_demo LatencyTests and return per-test samples (ms) from the result bundle.

    ``tests`` maps the XCTest identifier to ``samples_ms``; ``bench_results`` holds the full bench JSONs the
    tests attach (load times, first inference), keyed by the attachment's model name, when exported.
    """
    from .app_assets import BenchResultError, parse_bench_result

    require_xcode()
    if not Path(xctestrun).is_file():
        raise DeviceError(f"xctestrun not found: {xctestrun} (build it with `xcodebuild build-for-testing ...`, "
                          "see ios_demo/README.md §3)")
    work = Path(work or tempfile.mkdtemp(prefix="mobilevits-ios-"))
    bundle = work / "R.xcresult"
    if bundle.exists():
        shutil.rmtree(bundle)
    argv = ["xcodebuild", "test-without-building", "-xctestrun", str(xctestrun), "-destination", f"id={udid}",
            "-resultBundlePath", str(bundle), f"TEST_RUNNER_MOBILEVITS_ITERATIONS={int(iterations)}",
            f"TEST_RUNNER_MOBILEVITS_WARMUP={int(warmup)}"]
    if models:
        argv.append(f"TEST_RUNNER_MOBILEVITS_MODELS={','.join(models)}")
    log = _run(argv, timeout=7200, check=False)
    metrics = _run(["xcrun", "xcresulttool", "get", "test-results", "metrics", "--path", str(bundle), "--compact"],
                   timeout=300)
    tests: dict[str, list[float]] = {}
    for row in parse_xcresult_metrics(metrics.stdout):
        if "Clock" in (row["metric"] or "") or (row["display_name"] or "").startswith("Clock"):
            tests[row["test"]] = to_ms(row["measurements"], row["unit"])
    if not tests:  # fall back to the console lines (values at 6 decimals)
        for row in parse_xctest_log(log.stdout):
            if row["metric"].startswith("Clock"):
                tests[f"{row['class'].split('.')[-1]}/{row['test']}"] = [v * 1e3 for v in row["values"]]
    if not tests:
        tail = " | ".join((log.stdout + log.stderr).strip().splitlines()[-3:])
        raise DeviceError(f"the iOS latency tests produced no clock metrics (xcodebuild exit {log.returncode}): {tail}")
    results: dict[str, dict[str, Any]] = {}
    att = work / "attachments"
    exported = _run(["xcrun", "xcresulttool", "export", "attachments", "--path", str(bundle), "--output-path",
                     str(att)], timeout=300, check=False)
    if exported.returncode == 0 and att.is_dir():
        for f in sorted(att.rglob("bench_*.json")):
            try:
                obj = parse_bench_result(f.read_bytes(), source=str(f))
            except BenchResultError:
                continue
            key = obj["model"] + (f"_{obj['compute_units']}" if obj.get("compute_units") else "")
            results[key] = obj
    return {"tests": tests, "bench_results": results, "xcodebuild_exit": log.returncode, "result_bundle": str(bundle),
            "command": shlex.join(argv)}

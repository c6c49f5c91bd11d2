"""Latency harness: time artifacts (or models built on the fly) on this host, an Android phone or an iPhone.

Method (docs/latency.md#method): one cell per model x resolution x runtime x precision x threads, run in a seeded
random order with a cool-down between cells; per cell a cold load, a warm load, the first inference, then
``warmup`` untimed and ``iterations`` timed runs. Statistics use :func:`mobilevits.workflows.app_assets.compute_stats`,
the definition the phone apps use, so host and device numbers are comparable.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gc
import hashlib
import io
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters import backends

from .app_assets import compute_stats

# PyTorch eager, every registered converter's runtime (Python bindings), and runtimes that run one
# backend's artifacts another way: the native ExecuTorch runner (C++, mobilevits.workflows.native)
NATIVE = {"executorch-native": "executorch"}
RUNTIMES = ("torch", *backends(), *NATIVE)
MACHINES = ("qemu-arm64", "ssh")  # devices that run the native runner (mobilevits.workflows.machines)
CSV_FIELDS = ("order", "id", "model", "resolution", "runtime", "delegate", "precision", "threads", "device", "route",
              "warmup", "iterations", "load_ms_cold", "load_ms_warm", "first_inference_ms", "median_ms", "p10_ms",
              "p90_ms", "trimmed_mean_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "cv", "artifact")


# --------------------------------------------------------------------------------------------
# statistics
# --------------------------------------------------------------------------------------------


def _percentile(xs: list[float], q: float) -> float:
    pos = q * (len(xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def statistics(samples: Sequence[float]) -> dict[str, float]:
    """compute_stats (median, p90, trimmed mean, CV; the apps' definitions) plus p10, mean, std, min and max."""
    out: dict[str, float] = dict(compute_stats(samples))
    xs = sorted(float(s) for s in samples)
    n = len(xs)
    mean = sum(xs) / n
    out.update(p10_ms=_percentile(xs, 0.1), mean_ms=mean,
               std_ms=math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0,
               min_ms=xs[0], max_ms=xs[-1])
    return out


def _summary_statistics(s: dict[str, Any]) -> dict[str, Any]:
    """Statistics from a tool that prints only a summary (LiteRT benchmark_model): what it gives, None elsewhere."""
    mean, std = s.get("avg_ms"), s.get("std_ms")
    return {"median_ms": None, "p90_ms": None, "trimmed_mean_ms": None,
            "cv": (std / mean) if mean and std is not None else None, "p10_ms": None, "mean_ms": mean,
            "std_ms": std, "min_ms": s.get("min_ms"), "max_ms": s.get("max_ms")}


# --------------------------------------------------------------------------------------------
# host runners: each returns load_ms_cold, load_ms_warm, first_inference_ms, samples_ms
# --------------------------------------------------------------------------------------------

_LOADED: set[str] = set()  # artifacts already loaded in this process: their "cold" load is not cold


def _ms(t0: int) -> float:
    return (time.perf_counter_ns() - t0) / 1e6


def _timed_loop(step: Callable[[], Any], warmup: int, iterations: int) -> list[float]:
    for _ in range(warmup):
        step()
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        step()
        samples.append(_ms(t0))
    return samples


def host_latency(artifact: str | Path, x: np.ndarray, runs: int = 30, warmup: int = 3) -> dict[str, Any] | None:
    """One artifact's latency on this host, one thread, input ``x`` (1, 3, R, R): median and p90 of ``runs`` timed
    inferences after ``warmup``; None when this host has no runtime for it (Core ML off macOS). For a figure next
    to an accuracy (the QAT ledger); comparisons between artifacts belong in one :func:`bench` run."""
    from converters import get_converter, read_sidecar

    conv = get_converter(read_sidecar(artifact)["backend"])
    if not conv.runtime_availability()[0]:
        return None
    xc = np.ascontiguousarray(x, dtype=np.float32)
    with conv.open(Path(artifact), threads=1) as session:
        s = statistics(_timed_loop(lambda: session.run(xc), warmup, runs))
    return {"median_ms": round(s["median_ms"], 3), "p90_ms": round(s["p90_ms"], 3), "runs": runs, "threads": 1,
            "host": platform.processor() or platform.machine()}


def _host_torch(cell: dict[str, Any], x: np.ndarray, warmup: int, iterations: int) -> dict[str, Any]:
    import torch

    from converters import build_source

    torch.set_num_threads(int(cell["threads"]))
    source = cell["source"]

    def load() -> torch.nn.Module:
        return build_source(source)

    t0 = time.perf_counter_ns()
    model = load()
    cold = _ms(t0)
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        t0 = time.perf_counter_ns()
        model(xt)
        first = _ms(t0)
        del model
        gc.collect()
        t0 = time.perf_counter_ns()
        model = load()
        warm = _ms(t0)
        samples = _timed_loop(lambda: model(xt), warmup, iterations)
    return {"load_ms_cold": cold, "load_ms_warm": warm, "first_inference_ms": first, "samples_ms": samples,
            "runtime_version": torch.__version__, "actual_threads": torch.get_num_threads()}


def _host_artifact(cell: dict[str, Any], x: np.ndarray, warmup: int, iterations: int) -> dict[str, Any]:
    """Time an artifact through the session its converter opens: cold load, first inference, warm
    load, then ``warmup`` + ``iterations`` timed runs, all in this process."""
    from converters import get_converter

    conv = get_converter(cell["runtime"])
    # Core ML times on every compute unit unless the cell names some (the check uses the CPU alone)
    options = {"compute_units": str(cell.get("compute_units") or "all")} if cell["runtime"] == "coreml" else {}

    def load() -> Any:
        return conv.open(Path(cell["artifact"]), threads=int(cell["threads"]), **options)

    t0 = time.perf_counter_ns()
    session = load()
    cold = _ms(t0)
    xc = np.ascontiguousarray(x, dtype=np.float32)
    t0 = time.perf_counter_ns()
    session.run(xc)
    first = _ms(t0)
    session.close()
    del session
    gc.collect()
    t0 = time.perf_counter_ns()
    session = load()
    warm = _ms(t0)
    try:
        samples = _timed_loop(lambda: session.run(xc), warmup, iterations)
    finally:
        session.close()
    return {"load_ms_cold": cold, "load_ms_warm": warm, "first_inference_ms": first, "samples_ms": samples,
            "runtime_version": session.runtime_version}


def _host_native(cell: dict[str, Any], x: np.ndarray, warmup: int, iterations: int) -> dict[str, Any]:
    """Time a .pte with the native runner on this host."""
    from .machines import LocalDevice

    with LocalDevice() as dev:
        return _native_timing(dev, cell, x, warmup, iterations)


def _native_timing(dev: Any, cell: dict[str, Any], x: np.ndarray, warmup: int, iterations: int) -> dict[str, Any]:
    """Load, first inference, warm-up and the timed runs in the runner's own process on ``dev`` (no Python
    in the loop); the warm load is a second runner process."""
    from .machines import NativeSession

    with NativeSession(dev, cell["artifact"], threads=int(cell["threads"])) as s:
        r = s.time(x, warmup=warmup, iterations=iterations)
        again = s.time(x, warmup=0, iterations=1)
    return {"load_ms_cold": r["load_ms"], "load_ms_warm": again["load_ms"],
            "first_inference_ms": r["first_inference_ms"], "samples_ms": r["samples_ms"],
            # the TFLite runner names its runtime and Python; the native runner its compiler
            "runtime_version": f"{s.runtime_version} ({r['arch']}, "
                               f"{r['compiler'] if 'runtime' in r else 'g++ ' + r['compiler']})",
            "actual_threads": r["threads"], "emulated": dev.emulated}


def _host_runner(runtime: str) -> Callable[..., dict[str, Any]]:
    return {"torch": _host_torch, "executorch-native": _host_native}.get(runtime, _host_artifact)


# --------------------------------------------------------------------------------------------
# cells
# --------------------------------------------------------------------------------------------


def _sha256(p: Path) -> str | None:
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _split(values: str | Sequence[Any] | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        return [v.strip() for v in values.split(",") if v.strip()]
    return [str(v) for v in values]


def _artifact_cells(artifacts: Sequence[str | Path], runtimes: list[str]) -> list[dict[str, Any]]:
    from converters import read_sidecar

    cells = []
    for a in artifacts:
        path = Path(a)
        meta = read_sidecar(path)
        backend = meta["backend"]
        able = [backend, *(rt for rt, b in NATIVE.items() if b == backend)]  # the runtimes that run it
        chosen = [rt for rt in able if rt in runtimes] if runtimes else [backend]
        if not chosen:
            raise ValueError(f"{path.name} is a {backend} artifact but --runtime is {','.join(runtimes)}")
        for rt in chosen:
            cells.append({"model": meta["model"]["name"], "resolution": int(meta["input"]["shape"][-1]),
                          "runtime": rt, "delegate": meta.get("delegate"), "precision": meta["precision"],
                          "artifact": path, "source": meta["source"], "input_shape": meta["input"]["shape"]})
    return cells


def _reusable(model: str, resolution: int, runtime: str, precision: str, out: Path) -> Path | None:
    """An artifact in ``out`` built from the same random-init source with the same tool versions, if any."""
    from converters import artifact_stem, get_converter, read_sidecar, tool_versions

    path = out / f"{artifact_stem(model, resolution, runtime, precision)}{get_converter(runtime).suffix}"
    try:
        meta = read_sidecar(path)
    except (OSError, ValueError):
        return None
    src = meta.get("source", {})
    same = (src.get("name") == model and src.get("resolution") == resolution and not src.get("weights")
            and not src.get("overrides") and src.get("seed") == 0 and meta.get("precision") == precision
            and (meta.get("quantization") or {}).get("source") in (None, "ptq")
            and meta.get("tool_versions") == tool_versions())
    return path if same else None


def _model_cells(pairs: list[tuple[str, int | None]], runtimes: list[str], precision: str,
                 out: Path, log: Callable[[str], None], reuse: bool = False) -> list[dict[str, Any]]:
    import mobilevits
    from converters import convert

    cells = []
    for model, res in pairs:
        info = mobilevits.get_model_info(model)
        r = info.default_resolution if res is None else int(res)
        info.check_resolution(r)
        for rt in runtimes:
            if rt == "torch":
                if precision != "fp32":
                    raise ValueError(f"runtime torch is the fp32 eager reference; got --precision {precision}")
                source = {"name": model, "num_classes": 1000, "resolution": r, "seed": 0, "weights": None,
                          "normalize_in_model": True}
                cells.append({"model": model, "resolution": r, "runtime": "torch", "delegate": None,
                              "precision": "fp32", "artifact": None, "source": source,
                              "input_shape": [1, 3, r, r]})
                continue
            backend = NATIVE.get(rt, rt)
            found = _reusable(model, r, backend, precision, out) if reuse else None
            if found is not None:
                log(f"reusing {found.name}")
                cells += _artifact_cells([found], [rt])
                continue
            log(f"building {model} @{r} for {backend} {precision} ...")
            built = convert(model, to=backend, precision=precision, resolution=r, out=out, check=False,
                            show_progress=False)
            cells += _artifact_cells([built["artifact"]], [rt])
    return cells


def _parse_device(device: str) -> tuple[str, str | None]:
    kind, _, ident = device.partition(":")
    if kind not in ("host", "adb", "ios", *MACHINES):
        raise ValueError(f"--device must be host, adb[:SERIAL], ios[:UDID], qemu-arm64[:CPU] or "
                         f"ssh:[USER@]HOST[:PORT], got {device!r}")
    return kind, ident or None


# Instruction-set extensions that pick XNNPACK's and LiteRT's kernels; the CPU's name does not. On two hosts both
# called "AMD EPYC", DeiT's ExecuTorch int8 programs ran at 0.45x of fp32 (DeiT-Ti) and at 0.96x (DeiT-S, on a
# Zen 3 with AVX2 and no VNNI): int8 GEMMs outrun fp32 FMA by a wide margin only with int8 dot-product
# instructions (x86 VNNI, ARM dotprod / i8mm), so a latency row means little without them recorded.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",  # x86 /proc/cpuinfo
             "asimd", "asimddp", "i8mm", "sve", "sme")  # ARM (Linux names of dotprod and friends)


INT8_DOT_PRODUCT = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def lacks_int8_dot_product(isa: Sequence[str] | None) -> bool:
    """True when a known ISA list has no int8 dot-product extension (unknown: False, nothing to say)."""
    return bool(isa) and not any(f in INT8_DOT_PRODUCT for f in isa)


def cpu_isa(cpuinfo: str) -> list[str]:
    """The :data:`ISA_FLAGS` a ``/proc/cpuinfo`` text lists (its first ``flags`` / ``Features`` line)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            have = set(value.split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def host_environment() -> dict[str, Any]:
    """This machine: OS, CPU (name, family/model, the ISA extensions that pick int8 kernels), cores, load,
    git commit and the tool versions."""
    from converters import tool_versions

    cpu = platform.processor() or platform.machine()
    cpu_id, isa = None, []
    try:
        text = Path("/proc/cpuinfo").read_text()
        fields = {}
        for line in text.splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        cpu = fields.get("model name") or cpu
        if "cpu family" in fields:  # x86: family 25 model 1 (Zen 3) and 17 (Zen 4) are both "AMD EPYC"
            cpu_id = f"family {fields['cpu family']} model {fields.get('model')}"
        elif "CPU part" in fields:  # ARM: the implementer's part number names the core
            cpu_id = f"implementer {fields.get('CPU implementer')} part {fields['CPU part']}"
        isa = cpu_isa(text)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                cwd=Path(__file__).resolve().parents[2]).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"os": platform.platform(), "python": platform.python_version(), "cpu": cpu, "cpu_id": cpu_id,
            "cpu_isa": isa, "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "git_commit": commit, "tool_versions": tool_versions()}


# --------------------------------------------------------------------------------------------
# the harness
# --------------------------------------------------------------------------------------------


def bench(
    artifacts: Sequence[str | Path] | None = None,
    models: str | Sequence[str] | None = None,
    resolutions: str | Sequence[int] | None = None,
    runtime: str | Sequence[str] | None = None,
    precision: str = "fp32",
    device: str = "host",
    threads: Sequence[int] = (1,),
    warmup: int = 10,
    iterations: int = 50,
    cooldown: float = 1.0,
    seed: int = 0,
    out: str | Path = "out/bench",
    csv_path: str | Path | None = None,
    plot: str | Path | None = None,
    executor_runner: str | None = None,
    benchmark_model: str | None = None,
    cpu_mask: str | None = None,
    app: bool = False,
    xctestrun: str | None = None,
    log: Callable[[str], None] | None = None,
    pairs: Sequence[tuple[str, int]] | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """Time every cell and return ``{"environment", "device", "settings", "order", "cells"}``.

    Args:
        artifacts: ``.pte`` / ``.tflite`` / ``.mlpackage`` files with sidecars (runtime from the sidecar).
        models, resolutions, runtime: build artifacts for each model x resolution x runtime on the fly
            (``torch`` = the PyTorch eager reference, no artifact). Comma strings or lists.
        device: ``host``, ``adb[:SERIAL]``, ``ios[:UDID]``, or a machine that runs the native runner:
            ``qemu-arm64[:CPU]`` (emulated: its times are labelled and are not a phone's) or
            ``ssh:[USER@]HOST[:PORT]`` (an ARM Linux board); these time .pte files only.
        threads: thread counts to sweep (ignored on iOS, where neither runtime sets one).
        warmup, iterations: untimed and timed runs per cell, after the cold load and first inference.
        cooldown: seconds of sleep between cells.
        seed: shuffles the cell order (recorded in ``order``) and fills the input.
        csv_path, plot: also write one CSV row per cell / a PNG of latency vs resolution.
        executor_runner, benchmark_model: device binaries for adb (else $MOBILEVITS_EXECUTOR_RUNNER /
            $MOBILEVITS_BENCHMARK_MODEL); ``cpu_mask``: taskset mask (e.g. ``f0`` for big cores).
        app: on adb, use the android_demo bench mode instead of the CLI binaries.
        xctestrun: on iOS, the ``.xctestrun`` from ``xcodebuild build-for-testing`` of ios_demo.
        pairs: (model, resolution) cells to build instead of the models x resolutions product.
        reuse: take an artifact already in ``out`` when its sidecar says it was built from the same
            random-init source with the same tool versions (rebuild after changing model code).
    """
    log = log or (lambda msg: None)
    if warmup < 0 or iterations < 1:
        raise ValueError("warmup must be >= 0 and iterations >= 1")
    runtimes = _split(runtime)
    bad = [r for r in runtimes if r not in RUNTIMES]
    if bad:
        raise ValueError(f"unknown runtime {bad[0]!r}; choose from {', '.join(RUNTIMES)}")
    model_list = _split(models)
    res_list: list[int | None] = [int(r) for r in _split(resolutions)] or [None]
    pair_list: list[tuple[str, int | None]] = [(m, r) for m in model_list for r in res_list]
    if pairs:
        pair_list += [(m, int(r)) for m, r in pairs]
        model_list = sorted({m for m, _ in pair_list})
    if not artifacts and not model_list:
        raise ValueError("give artifacts to time, or --models to build")
    if model_list and not runtimes:
        runtimes = ["torch"]
    kind, ident = _parse_device(device)
    if kind == "ios" and "torch" in runtimes:
        raise ValueError("runtime torch runs on the host only")
    if kind == "adb" and ("torch" in runtimes or "coreml" in runtimes):
        raise ValueError("on Android only executorch (.pte) and tflite artifacts can be timed")
    thread_list = [int(t) for t in threads] or [1]
    if kind == "ios":
        thread_list = [0]  # not settable on iOS: recorded as null
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    # fail early on what cannot run here: the device, then the tools, then the artifacts
    dev_ctx = _open_device(kind, ident, xctestrun, app)
    if kind == "host":
        _host_runtimes_check(runtimes)
    if kind in ("adb", "ios") and any(rt in NATIVE for rt in runtimes):
        raise ValueError(f"{', '.join(NATIVE)} runs on the host, qemu-arm64 and ssh devices")
    base_cells = _artifact_cells(artifacts or [], runtimes if artifacts else [])
    if kind in MACHINES:
        bad_rt = sorted(({c["runtime"] for c in base_cells} | set(runtimes)) - {"executorch", "tflite", *NATIVE})
        if bad_rt:
            dev_ctx["machine"].close()
            raise ValueError(f"{kind} times .pte (native runner) and .tflite (LiteRT, aarch64) files, not "
                             f"{', '.join(bad_rt)}")
    if kind == "adb":
        bad_art = [c["artifact"].name for c in base_cells if c["runtime"] not in ("executorch", "tflite")]
        if bad_art:
            raise ValueError(f"on Android only .pte and .tflite can be timed, not {', '.join(bad_art)}")
        if not app:
            _resolve_adb_tools(dev_ctx, set(runtimes) | {c["runtime"] for c in base_cells}, executor_runner,
                               benchmark_model)
    if kind == "host":
        _host_runtimes_check([c["runtime"] for c in base_cells])
    base_cells += _model_cells(pair_list, runtimes, precision, out, log, reuse)
    cells = []
    for c in base_cells:
        for t in thread_list:
            cell = dict(c, threads=t)
            cell["id"] = (f"{c['model']}@{c['resolution']}/{c['runtime']}/{c['precision']}/"
                          f"{'default' if kind == 'ios' else f't{t}'}")
            cells.append(cell)
    order = list(range(len(cells)))
    random.Random(seed).shuffle(order)
    rng = np.random.default_rng(seed)

    results: list[dict[str, Any] | None] = [None] * len(cells)
    if kind == "ios":
        for rec in _run_ios(dev_ctx, [cells[i] for i in order], warmup, iterations, out):
            results[cells.index(rec.pop("_cell"))] = rec
    else:
        for k, i in enumerate(order):
            cell = cells[i]
            if k and cooldown > 0:
                time.sleep(cooldown)
            log(f"[{k + 1}/{len(cells)}] {cell['id']}")
            x = rng.random(tuple(cell["input_shape"]), dtype=np.float32)
            if kind == "host":
                key = str(cell["artifact"] or cell["id"])
                timing = _host_runner(cell["runtime"])(cell, x, warmup, iterations)
                timing["route"] = "host-python"
                timing["cold_in_process"] = key not in _LOADED
                _LOADED.add(key)
                timing["device_state_before"] = timing["device_state_after"] = None
            elif kind in MACHINES:
                timing = _native_timing(dev_ctx["machine"], cell, x, warmup, iterations)
                timing["route"] = "native-runner"
                timing["device_state_before"] = timing["device_state_after"] = None
            else:
                timing = _run_adb_cell(dev_ctx, cell, warmup, iterations, cpu_mask, out)
            results[i] = _record(cell, timing, k, kind, warmup, iterations, cpu_mask)

    if dev_ctx and "machine" in dev_ctx:
        dev_ctx["machine"].close()
    cell_records = [r for r in results if r is not None]
    result = {"schema": "mobilevits.workflows.bench/1", "timestamp": _dt.datetime.now(_dt.UTC).isoformat(),
              "environment": host_environment(), "device": dev_ctx.get("info") if dev_ctx else {"kind": "host"},
              "settings": {"device": device, "threads": thread_list if kind != "ios" else None, "warmup": warmup,
                           "iterations": iterations, "cooldown_s": cooldown, "seed": seed, "cpu_mask": cpu_mask,
                           "route": "app" if app else None, "precision": precision},
              "order": [cells[i]["id"] for i in order], "cells": cell_records}
    if csv_path:
        write_csv(result, csv_path)
        result["csv"] = str(csv_path)
    if plot:
        write_plot(result, plot)
        result["plot"] = str(plot)
    return result


def _host_runtimes_check(runtimes: Sequence[str]) -> None:
    """Fail before any conversion when a runtime cannot time artifacts on this host (Core ML off macOS)."""
    from converters import RuntimeUnavailableError, get_converter

    for rt in dict.fromkeys(r for r in runtimes if r != "torch"):
        if rt in NATIVE:
            from .native import build_runner

            build_runner()  # RuntimeUnavailableError naming the compiler package when it cannot be built
            continue
        ok, why = get_converter(rt).runtime_availability()
        if not ok:
            raise RuntimeUnavailableError(f"{rt} cannot time artifacts on this host: {why}")


def _record(cell: dict[str, Any], timing: dict[str, Any], k: int, kind: str, warmup: int, iterations: int,
            cpu_mask: str | None) -> dict[str, Any]:
    samples = timing.get("samples_ms") or []
    stats = statistics(samples) if samples else _summary_statistics(timing.get("summary") or {})
    art = cell.get("artifact")
    rec = {"id": cell["id"], "order": k, "model": cell["model"], "resolution": cell["resolution"],
           "runtime": cell["runtime"], "delegate": cell.get("delegate"), "precision": cell["precision"],
           "threads": None if kind == "ios" else cell["threads"], "device": kind,
           "cpu_mask": cpu_mask if kind == "adb" else None, "artifact": str(art) if art else None,
           "artifact_sha256": _sha256(Path(art)) if art and Path(art).is_file() else None,
           "warmup": warmup, "iterations": iterations, "stats": stats}
    for key in ("route", "load_ms_cold", "load_ms_warm", "first_inference_ms", "samples_ms", "cold_in_process",
                "device_state_before", "device_state_after", "runtime_version", "actual_threads", "summary",
                "command", "bench_result", "emulated"):
        if key in timing:
            rec[key] = timing[key]
    rec.setdefault("samples_ms", samples)
    return rec


# --------------------------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------------------------


def _open_device(kind: str, ident: str | None, xctestrun: str | None, app: bool) -> dict[str, Any] | None:
    from . import devices

    if kind == "host":
        return None
    if kind in MACHINES:
        from .machines import open_device

        machine = open_device(f"{kind}:{ident}" if ident else kind)
        return {"machine": machine, "info": machine.info()}
    if kind == "adb":
        adb = devices.Adb(ident)
        return {"adb": adb, "app": app, "info": dict(devices.android_info(adb), kind="adb")}
    devices.require_xcode()
    if not xctestrun:
        raise devices.DeviceError("iOS runs need --xctestrun PATH (from `xcodebuild build-for-testing`, see "
                                  "ios_demo/README.md §3)")
    dev = devices.pick_ios_device(ident)
    return {"udid": dev["udid"], "xctestrun": Path(xctestrun),
            "info": {"kind": "ios", "os": "iOS", "model": dev["name"], "os_version": dev["os_version"],
                     "udid": dev["udid"], "soc": None}}


def _resolve_adb_tools(ctx: dict[str, Any], runtimes: set[str], executor_runner: str | None,
                       benchmark_model: str | None) -> None:
    from . import devices

    if "executorch" in runtimes:
        ctx["executor_runner"] = devices.find_tool(executor_runner, "MOBILEVITS_EXECUTOR_RUNNER",
                                                   devices.HOW_TO_GET_EXECUTOR_RUNNER, "executor_runner")
    if "tflite" in runtimes:
        ctx["benchmark_model"] = devices.find_tool(benchmark_model, "MOBILEVITS_BENCHMARK_MODEL",
                                                   devices.HOW_TO_GET_BENCHMARK_MODEL, "benchmark_model")


def _run_adb_cell(ctx: dict[str, Any], cell: dict[str, Any], warmup: int, iterations: int, cpu_mask: str | None,
                  out: Path) -> dict[str, Any]:
    from . import devices

    adb = ctx["adb"]
    art = Path(cell["artifact"])
    before = devices.android_state(adb)
    if ctx["app"]:
        from .app_assets import export_app_assets

        dest = out / "app_models" / art.stem
        export_app_assets([art], to="android_demo", dest=dest, replace=True)
        res = devices.run_android_app(adb, dest, art.stem, cell["threads"], warmup, iterations)
        timing = {"route": "app", "load_ms_cold": res["load_ms_cold"], "load_ms_warm": res["load_ms_warm"],
                  "first_inference_ms": res["first_inference_ms"], "samples_ms": res["samples_ms"],
                  "bench_result": res, "runtime_version": res.get("runtime_version")}
    elif cell["runtime"] == "executorch":
        timing = devices.run_executor_runner(adb, art, ctx["executor_runner"], cell["threads"], warmup,
                                             iterations, cpu_mask)
    else:
        timing = devices.run_benchmark_model(adb, art, ctx["benchmark_model"], cell["threads"], warmup,
                                             iterations, cpu_mask)
    timing["device_state_before"] = before
    timing["device_state_after"] = devices.android_state(adb)
    return timing


def _run_ios(ctx: dict[str, Any], cells: list[dict[str, Any]], warmup: int, iterations: int,
             out: Path) -> list[dict[str, Any]]:
    """All iOS cells in one xcodebuild run (the app bundles its models); matched to tests by manifest name."""
    from . import devices

    names = sorted({Path(c["artifact"]).stem for c in cells})
    res = devices.run_ios_xctest(ctx["xctestrun"], ctx["udid"], warmup, iterations, models=names, work=out / "ios")
    recs = []
    for k, cell in enumerate(cells):
        stem = Path(cell["artifact"]).stem
        units = "all" if cell["runtime"] == "coreml" else None
        test_name = f"test_{stem}" + (f"_{units}" if units else "")
        samples = next((v for t, v in res["tests"].items() if t.split("/")[-1].rstrip("()") == test_name), None)
        if samples is None:
            raise devices.DeviceError(f"no latency test {test_name} in the result bundle (is {stem} in the app's "
                                      "Models/manifest.json? run `mobilevits export-app-assets ... --to ios_demo` "
                                      "and rebuild)")
        full = res["bench_results"].get(stem + (f"_{units}" if units else ""))
        timing = {"route": "xctest", "samples_ms": samples,
                  "load_ms_cold": full["load_ms_cold"] if full else None,
                  "load_ms_warm": full["load_ms_warm"] if full else None,
                  "first_inference_ms": full["first_inference_ms"] if full else None,
                  "bench_result": full, "command": res["command"],
                  "device_state_before": None, "device_state_after": None}
        rec = _record(cell, timing, k, "ios", warmup, iterations, None)
        rec["_cell"] = cell
        recs.append(rec)
    return recs


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------


def _row(rec: dict[str, Any]) -> dict[str, Any]:
    row = {k: rec.get(k) for k in CSV_FIELDS}
    row.update({k: v for k, v in rec["stats"].items() if k in CSV_FIELDS})
    return row


def write_csv(result: dict[str, Any], path: str | Path) -> Path:
    """One row per cell: identity, load/first-inference times and the statistics."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS))
        w.writeheader()
        for rec in sorted(result["cells"], key=lambda r: r["order"]):
            w.writerow(_row(rec))
    return path


def write_plot(result: dict[str, Any], path: str | Path) -> Path:
    """PNG of median latency vs resolution, one line per model x runtime x precision x threads, p10-p90 bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float, float]]] = {}
    for rec in result["cells"]:
        s = rec["stats"]
        mid = s.get("median_ms") if s.get("median_ms") is not None else s.get("mean_ms")
        if mid is None:
            continue
        lo = s.get("p10_ms") if s.get("p10_ms") is not None else mid - (s.get("std_ms") or 0.0)
        hi = s.get("p90_ms") if s.get("p90_ms") is not None else mid + (s.get("std_ms") or 0.0)
        label = f"{rec['model']} {rec['runtime']} {rec['precision']}" + (
            f" t{rec['threads']}" if rec.get("threads") is not None else "")
        series.setdefault(label, []).append((rec["resolution"], mid, mid - lo, hi - mid))
    fig, ax = plt.subplots(figsize=(8, 5))
    # one colour per model, one line style per runtime, so a dozen series stay tellable apart
    models = sorted({label.split()[0] for label in series})
    colours = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(models)}
    styles = {"torch": ":", "executorch": "-", "tflite": "--", "coreml": "-."}
    for label, pts in sorted(series.items()):
        pts.sort()
        model, runtime = label.split()[:2]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[[p[2] for p in pts], [p[3] for p in pts]],
                    marker="o", capsize=3, label=label, color=colours[model], linestyle=styles.get(runtime, "-"))
    dev = result.get("device") or {}
    ax.set_xlabel("input resolution (px)")
    ax.set_ylabel("latency (ms): median, bars p10-p90")
    ax.set_title(f"mobilevits bench on {dev.get('model') or dev.get('kind') or 'host'}")
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def format_table(result: dict[str, Any]) -> str:
    """The result as a text table for people."""
    head = ("model", "res", "runtime", "prec", "thr", "median", "p90", "trim", "cv%", "load c/w", "first")
    rows = []
    for rec in sorted(result["cells"], key=lambda r: (r["model"], r["resolution"], r["runtime"], r["precision"],
                                                        r.get("threads") or 0)):
        s = rec["stats"]
        rows.append((rec["model"], str(rec["resolution"]), rec["runtime"], rec["precision"],
                     "-" if rec.get("threads") is None else str(rec["threads"]), _fmt(s.get("median_ms")),
                     _fmt(s.get("p90_ms")), _fmt(s.get("trimmed_mean_ms") or s.get("mean_ms")),
                     _fmt(None if s.get("cv") is None else 100 * s["cv"], 1),
                     f"{_fmt(rec.get('load_ms_cold'), 1)}/{_fmt(rec.get('load_ms_warm'), 1)}",
                     _fmt(rec.get("first_inference_ms"))))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    buf = io.StringIO()
    env = result["environment"]
    dev = result.get("device") or {}
    note = ""
    if dev.get("kind") in (None, "host"):
        where = "host " + str(env.get("cpu")) + (f" ({'+'.join(env['cpu_isa'])})" if env.get("cpu_isa") else "")
        if lacks_int8_dot_product(env.get("cpu_isa")) and any(r["precision"] == "int8" for r in result["cells"]):
            note = ("note: this CPU has no int8 dot-product instructions (x86 VNNI, ARM dotprod), so int8 runs at "
                    "about fp32 speed here; phones with Armv8.2 dot product (Cortex-A55, A76 and later) differ\n")
    elif dev.get("kind") in MACHINES:  # emulated times are an emulator's cost, never a phone's
        where = (f"EMULATED {dev['kind']} CPU {dev.get('cpu')} ({dev.get('emulator')}): not device times"
                 if dev.get("emulated") else f"{dev.get('host')} ({dev.get('arch')}, {dev.get('cpu')})")
    else:
        where = f"{dev.get('model')} ({dev.get('os')} {dev.get('os_version')}, {dev.get('soc') or 'SoC n/a'})"
    buf.write(f"{where}; times in ms; warm-up {result['settings']['warmup']}, "
              f"{result['settings']['iterations']} iterations; order seed {result['settings']['seed']}\n")
    buf.write(note)
    for r in [head, *rows]:
        buf.write("  ".join(c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  .rstrip() + "\n")
    return buf.getvalue().rstrip()


def to_json(result: dict[str, Any]) -> str:
    """The full result as JSON (paths as strings)."""
    return json.dumps(result, indent=2, default=str)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `mobilevits bench`")

"""``mobilevits``: one command line over the Python API (each subcommand calls a function of the same name).

    mobilevits list [--resolution R] [--json]
    mobilevits convert MODEL --to {executorch,coreml,tflite} [--precision P] [--resolution R] ...
    mobilevits check ARTIFACT [--data photos|digits|DIR] [--layers] [--device qemu-arm64[:CPU]|ssh:HOST] [--json]
    mobilevits predict ARTIFACT|MODEL IMAGE... [--top 5] [--labels imagenet1k|FILE] [--device ...] [--json]
    mobilevits profile ARTIFACT.pte [--device host|qemu-arm64[:CPU]|ssh:HOST] [--plot F.png] [--json]
    mobilevits build-runner [--target host|aarch64]
    mobilevits demo
    mobilevits export-app-assets ARTIFACT... --to {android_demo,ios_demo} [--labels FILE] [--json]
    mobilevits bench [ARTIFACT...] [--models M,...] [--runtime R] [--device host|adb|ios|qemu-arm64|ssh] [--json]
    mobilevits findings [--runtime executorch,tflite] [--device host|adb|ios|qemu-arm64|ssh] [--json]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1


class CliError(Exception):
    """A user-facing failure: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def _model_name(value: str) -> str:
    from ..hub import is_hub_id, parse_hub_id
    from .catalog import model_entry

    if is_hub_id(value):  # resolved (cache, hub) when used, where a missing file is one clear line
        parse_hub_id(value)
        return value
    try:
        model_entry(value)  # the catalog: no torch import for an argument error
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


DEVICE_HELP = ("host (default), adb[:SERIAL], ios[:UDID], qemu-arm64[:CPU] (emulated ARM, labelled) or "
               "ssh:[USER@]HOST[:PORT] (ARM Linux board)")


def _int_at_least(value: str, minimum: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"expected {'a positive number' if minimum == 1 else f'{minimum} or more'}"
                                         f", got {n}")
    return n


def _names(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated option values -> one list (None when not given)."""
    if not values:
        return None
    return [n.strip() for v in values for n in v.split(",") if n.strip()]


def _positive_int(value: str) -> int:
    return _int_at_least(value, 1)


def _non_negative_int(value: str) -> int:
    return _int_at_least(value, 0)


# --------------------------------------------------------------------------------------------
# subcommands: thin wrappers
# --------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    from .catalog import model_names, read
    from .report import format_model_table, to_json

    if args.resolution is None:  # each model at its own resolution: the catalog has the counts (no torch)
        names = set(model_names(args.pattern))
        keep = ("name", "family", "resolution", "params", "macs", "paper", "macs_paper_convention")
        rows = [{k: m[k] for k in keep if k in m} for m in read()["models"] if m["name"] in names]
    else:
        from .report import model_table

        rows = model_table(resolution=args.resolution, pattern=args.pattern, show_progress=not args.json)
    print(to_json(rows) if args.json else format_model_table(rows))
    return 0


def _backend_list(value: str) -> list[str]:
    """A comma list of backends, checked against the catalog at parse time."""
    from .catalog import backends

    known = list(backends())
    names = [v.strip() for v in value.split(",") if v.strip()]
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown backend {', '.join(map(repr, bad)) or repr(value)}; "
                                         f"choose one or more of {','.join(known)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"a backend is named twice in {value!r}")
    return names


def _runtime_list(value: str) -> str:
    """A comma list of runtimes, checked against the catalog at parse time."""
    from .catalog import runtimes

    unknown = [r for r in value.split(",") if r.strip() and r.strip() not in runtimes()]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown runtime {unknown[0]!r}; choose from {', '.join(runtimes())}")
    return value


def cmd_build_runner(args: argparse.Namespace) -> int:
    from .native import build_runner
    from .report import to_json

    bundle = build_runner(args.target, force=args.force,
                          log=None if args.json else lambda m: print(m, file=sys.stderr))
    info = {"target": bundle.target, "binary": str(bundle.binary), "lib_dir": str(bundle.lib_dir), "key": bundle.key}
    print(to_json(info) if args.json else f"native runner: {bundle.binary}")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from converters import convert

    from .report import to_json

    options = dict(precision=args.precision, resolution=args.resolution, weights=args.weights, out=args.out,
                   check=not args.no_check, data=args.data, delegate=args.delegate, num_classes=args.num_classes,
                   seed=args.seed, calibration=args.calibration,
                   require_full_delegation=args.require_full_delegation, labels=args.labels, forms=args.form,
                   keep_float=_names(args.keep_float), force=args.force, show_progress=not args.json)
    if len(args.to) == 1:
        results = [convert(args.model, to=args.to[0], **options)]
    else:
        from converters import convert_many

        results = convert_many(args.model, args.to, jobs=args.jobs, log=_logger(args.json), **options)
    if args.json:
        print(to_json(results[0] if len(results) == 1 else results))
    else:
        print("\n\n".join(_describe_convert(r) for r in results))
        if len(results) > 1:
            from .report import conversion_table

            print("\n" + conversion_table(results))
    return 0 if all(r.get("check") is None or r["check"]["passed"] for r in results) else EXIT_FAILED


def cmd_check(args: argparse.Namespace) -> int:
    from converters import check_artifact

    from .report import to_json

    if args.device != "host":
        from .machines import NativeSession, open_device

        if Path(args.artifact).suffix not in (".pte", ".tflite"):
            raise ValueError(f"--device {args.device} runs .pte (native runner) and .tflite (LiteRT) files, "
                             f"not {Path(args.artifact).name}; check it on this host without --device")
        with open_device(args.device) as dev, NativeSession(dev, args.artifact, threads=args.threads) as session:
            result = check_artifact(args.artifact, data=args.data, limit=args.limit, threads=args.threads,
                                    show_progress=not args.json, layers=args.layers, session=session)
            result["device_info"] = dev.info()
    else:
        result = check_artifact(args.artifact, data=args.data, limit=args.limit, threads=args.threads,
                                show_progress=not args.json, layers=args.layers)
    if args.json:
        print(to_json(result))
    else:
        print(_describe_check(result))
        if args.layers:
            print(_describe_layers(result))
    return 0 if result["passed"] else EXIT_FAILED


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import format_predictions, predict
    from .report import to_json

    result = predict(args.target, args.images, top=args.top, labels=args.labels, weights=args.weights,
                     num_classes=args.num_classes, resolution=args.resolution, device=args.device)
    print(to_json(result) if args.json else format_predictions(result))
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from .profile import format_profile, profile_artifact, write_profile_plot
    from .report import to_json

    instructions = None
    tflite = Path(args.artifact).suffix == ".tflite"
    if tflite and not (args.instructions or args.functions):
        raise ValueError(f"{args.artifact}: per-operator profiles read ExecuTorch's ETDump (a .pte); a .tflite gets "
                         f"its instructions per forward: --instructions --device qemu-arm64 (--functions: per kernel)")
    if args.instructions or args.functions:  # first: its refusals (device, threads) come before the profile's run
        from .profile import count_instructions, format_functions

        instructions = count_instructions(args.artifact, threads=args.threads, device=args.device,
                                          by_function=args.functions)
    if tflite:
        head = (f"{Path(args.artifact).name}: {instructions['instructions_per_forward'] / 1e6:.1f} M instructions "
                f"per forward on {instructions['device']} ({instructions['tool']})")
        print(to_json(instructions) if args.json else
              head + ("\n\n" + format_functions(instructions) if args.functions else ""))
        return 0
    result = profile_artifact(args.artifact, device=args.device, threads=args.threads, warmup=args.warmup,
                              iterations=args.iterations, etdump=args.etdump)
    if instructions:
        result["instructions"] = instructions
    if args.plot:
        result["plot"] = str(write_profile_plot(result, args.plot))
    print(to_json(result) if args.json else format_profile(result)
          + ("\n\n" + format_functions(instructions) if args.functions else ""))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .report import to_json
    from .training import train

    result = train(args.model, data=args.data, weights=args.weights, resolution=args.resolution,
                   epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, out=args.out, resume=args.resume,
                   seed=args.seed, train_limit=args.train_limit, show_progress=not args.json,
                   log=_logger(args.json), augment=args.augment, workers=args.workers, device=args.device,
                   amp=args.amp)
    if os.environ.get("RANK", "0") != "0":  # torchrun: only rank 0 reports
        return 0
    if args.json:
        print(to_json(result))
    else:
        top1 = result["val_top1"]
        print(f"weights:    {result['weights']}\ncheckpoint: {result['checkpoint']}\n"
              f"val top-1:  {'n/a' if top1 is None else f'{100 * top1:.2f}%'}")
    return 0


def cmd_qat(args: argparse.Namespace) -> int:
    from .report import to_json
    from .training import ledger_markdown, qat

    result = qat(args.model, backend=args.backend, data=args.data, weights=args.weights,
                 resolution=args.resolution, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                 out=args.out, resume=args.resume, seed=args.seed, train_limit=args.train_limit,
                 float_epochs=args.float_epochs, convert_artifact=not args.no_convert, show_progress=not args.json,
                 log=_logger(args.json), keep_float=_names(args.keep_float), augment=args.augment,
                 workers=args.workers, device=args.device, amp=args.amp, teacher=args.teacher,
                 kd_alpha=args.kd_alpha, kd_temperature=args.kd_temperature, distillation=args.distillation)
    if args.json:
        print(to_json({k: result[k] for k in ("ledger", "artifact", "checkpoint", "weights", "reference", "notes",
                                              "check", "train_data", "val_data", "skipped", "device", "amp")}))
    else:
        print(ledger_markdown(result))
    check = result.get("check") or {}
    return 0 if check.get("passed", True) and result["ledger"].get("passed", True) else EXIT_FAILED


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from .report import to_json
    from .sensitivity import format_sensitivity, sensitivity, write_sensitivity_plot

    result = sensitivity(args.model, backend=args.backend, weights=args.weights, data=args.data,
                         resolution=args.resolution, limit=args.limit, calibration=args.calibration,
                         groups=_names(args.groups), show_progress=not args.json)
    if args.plot:
        result["plot"] = str(write_sensitivity_plot(result, args.plot))
    print(to_json(result) if args.json else format_sensitivity(result))
    return 0


def _logger(json_mode: bool) -> Callable[[str], None]:
    """Progress lines go to stderr, and are dropped with --json so stdout stays one JSON object."""
    if json_mode:
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench, format_table, to_json

    result = bench(args.artifacts, models=args.models, resolutions=args.resolutions, runtime=args.runtime,
                   precision=args.precision, device=args.device, threads=args.threads, warmup=args.warmup,
                   iterations=args.iterations, cooldown=args.cooldown, seed=args.seed, out=args.out,
                   csv_path=args.csv, plot=args.plot, executor_runner=args.executor_runner,
                   benchmark_model=args.benchmark_model, cpu_mask=args.cpu_mask, app=args.app,
                   xctestrun=args.xctestrun, log=_logger(args.json))
    print(to_json(result) if args.json else format_table(result))
    return 0


def cmd_findings(args: argparse.Namespace) -> int:
    import json

    from .findings import findings, format_findings
    from .report import to_json

    extra = {k: v for k, v in (("executor_runner", args.executor_runner), ("benchmark_model", args.benchmark_model),
                               ("cpu_mask", args.cpu_mask), ("app", args.app), ("xctestrun", args.xctestrun)) if v}
    result = findings(runtime=args.runtime, device=args.device, precision=args.precision, threads=args.threads,
                      warmup=args.warmup, iterations=args.iterations, cooldown=args.cooldown, seed=args.seed,
                      out=args.out, reuse=not args.rebuild, plot=args.plot, repeats=args.repeats,
                      log=_logger(args.json), **extra)
    from converters import atomic_write_text

    out = Path(args.out)
    atomic_write_text(out / "findings.json", json.dumps(result, indent=2, default=str))  # never half a file
    if args.json:
        print(to_json(result["findings"]))
    else:
        print(format_findings(result))
        print(f"(full results with raw samples: {out / 'findings.json'}"
              + (f"; plot: {args.plot}" if args.plot else "") + ")")
    return 0


def _add_device_tool_options(s: argparse.ArgumentParser) -> None:
    """Where the phone-side tools are (bench and findings share them)."""
    s.add_argument("--executor-runner", help="adb: ExecuTorch executor_runner binary ($MOBILEVITS_EXECUTOR_RUNNER)")
    s.add_argument("--benchmark-model", help="adb: LiteRT benchmark_model binary ($MOBILEVITS_BENCHMARK_MODEL)")
    s.add_argument("--cpu-mask", help="adb: taskset CPU mask for the binaries, e.g. f0 for the big cores")
    s.add_argument("--app", action="store_true", help="adb: time with the android_demo bench mode instead")
    s.add_argument("--xctestrun", help="ios: the .xctestrun from `xcodebuild build-for-testing` of ios_demo")


def _int_list(value: str) -> list[int]:
    return [_positive_int(v) for v in value.split(",") if v.strip()]


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo

    return demo(out=args.out, full=args.full, fast=args.fast, jobs=args.jobs)


def cmd_export_app_assets(args: argparse.Namespace) -> int:
    from .app_assets import export_app_assets
    from .report import to_json

    result = export_app_assets(args.artifacts, to=args.to, labels=args.labels, dest=args.dest, replace=args.replace)
    if args.json:
        print(to_json(result))
    else:
        lines = [f"{result['app']}: {len(result['models'])} model(s) -> {result['dest']}",
                 f"manifest:   {result['manifest']}"]
        lines += [f"  {m['name']}: expected top-1 {m['expected']['top1_label']!r} on {m['test_image']['file']} "
                  f"(margin {m['expected']['margin']:.3g}; {m['expected']['reference']})" for m in result["models"]]
        print("\n".join(lines))
    return 0


def _describe_convert(r: dict[str, Any]) -> str:
    from converters import Delegation

    from .report import fmt_count

    how = ("reused: made from the same inputs (model, weights, settings, toolchain, code); --force rebuilds"
           if r.get("reused") else ", ".join(f"{k} {v:.1f} s" for k, v in (r.get("stages") or {}).items()))
    lines = [f"artifact:   {r['artifact']}  ({fmt_count(r['size_bytes'], 'B')}, {r['seconds']:.1f} s)",
             f"sidecar:    {r['sidecar']}",
             f"delegation: {Delegation.from_dict(r['delegation']).summary()}",
             f"time:       {how}"]
    if r.get("check"):
        lines.append(_describe_check(r["check"], indent="check:      "))
    return "\n".join(lines)


def _describe_check(c: dict[str, Any], indent: str = "") -> str:
    verdict = "PASS" if c["passed"] else "FAIL"
    if c.get("sqnr_db") is None:
        return f"{indent}{verdict} [{c['runtime']}] {c['note']}"
    sq = c["sqnr_db"]
    sq_s = "inf" if sq == float("inf") or sq == "inf" else f"{sq:.1f}"
    if c["precision"] == "int8":
        parts = [f"{indent}{verdict} [{c['runtime']} int8] rule {c.get('rule') or 'n/a'}: SQNR {sq_s} dB vs "
                 f"{c['reference']}; quantised vs float {_db(c.get('sqnr_quantised_vs_float_db'))} dB, "
                 f"margin {_db(c.get('margin_db'), signed=True)} dB, top-1 agreement {100 * c['top1_agreement']:.1f}% "
                 f"on {c.get('images')} images",
                 c.get("rule_note", ""),
                 f"max |err| {c['max_abs_error']:.3g}, cosine {c['cosine']:.6f}, top-5 agreement "
                 f"{100 * c['top5_agreement']:.1f}%, SQNR vs float source {_db(c.get('sqnr_vs_float_db'))} dB"]
    else:
        parts = [f"{indent}{verdict} [{c['runtime']} {c['precision']}] SQNR {sq_s} dB (threshold "
                 f"{c['threshold_db']:g} dB vs {c['reference']})",
                 f"max |err| {c['max_abs_error']:.3g}, cosine {c['cosine']:.6f}, top-1 agreement "
                 f"{100 * c['top1_agreement']:.1f}%, top-5 agreement {100 * c['top5_agreement']:.1f}%"]
    if c.get("coreml_predict"):  # macOS: Core ML itself next to the NumPy MIL executor
        p = c["coreml_predict"]
        parts.append(f"Core ML (MLModel.predict): {'PASS' if p['passed'] else 'FAIL'} SQNR {_db(p['sqnr_db'])} dB, "
                     f"top-1 agreement {100 * p['top1_agreement']:.1f}%; executor vs Core ML "
                     f"{_db(c.get('executor_vs_coreml_sqnr_db'))} dB")
    if c.get("accuracy"):
        parts.append("accuracy " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in c["accuracy"].items()))
    parts.append(c["note"])
    pad = " " * len(indent)
    return ("\n" + pad).join(parts)


def _db(v: Any, signed: bool = False) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    return "inf" if v == float("inf") else "-inf" if v == float("-inf") else f"{v:+.1f}" if signed else f"{v:.1f}"


def _describe_layers(c: dict[str, Any], head: int = 8, around: int = 3, tail: int = 4) -> str:
    """The first diverging op and a short per-op table (start, around the divergence, end)."""
    if "layers" not in c:
        return "layers: " + c.get("layers_note", "no per-layer comparison for this artifact")
    rows, first = c["layers"], c.get("first_divergence")
    lsb = c.get("layers_tolerance_lsb")  # TFLite int8: local error in int8 steps
    tol = c.get("layers_tolerance_db", c["threshold_db"])
    if first and lsb is not None:
        ops = "+".join(first.get("segment") or [first["op"]])
        lines = [f"first divergence: {ops} ({first['type']}, {first['shape']}) recomputed from the "
                 f"artifact's own inputs is {first['local_max_lsb']} int8 steps off > tolerance {lsb}"]
    elif first:
        lines = [f"first divergence: op {first['op']!r} ({first['type']}, output {first['output']} "
                 f"{first['shape']}) SQNR {_db(first['sqnr_db'])} dB < tolerance {tol:g} dB ({first['status']})"]
    else:
        within = f"{lsb} int8 step locally" if lsb is not None else f"{tol:g} dB"
        lines = [f"first divergence: none (every compared op within {within})"]
    lines.append(c.get("layers_note", ""))
    show = set(range(min(head, len(rows)))) | set(range(max(0, len(rows) - tail), len(rows)))
    if first:
        k = rows.index(first)
        show |= set(range(max(0, k - around), min(len(rows), k + around + 1)))
    if lsb is not None:
        lines.append(f"{'#':>5}  {'op type':<18} {'PyTorch op':<32} {'SQNR dB':>8} {'local':>6} {'flips':>7}  status")
    else:
        lines.append(f"{'#':>5}  {'op type':<22} {'output':<40} {'SQNR dB':>8}  status")
    last = -1
    for i in sorted(show):
        if i != last + 1:
            lines.append(f"{'...':>5}")
        r = rows[i]
        mark = " <--" if r is first else ""
        if lsb is not None:
            ops = "+".join(r.get("segment") or [r["op"]])
            lines.append(f"{r['index']:>5}  {r['type']:<18} {ops[:32]:<32} {_db(r['sqnr_db']):>8} "
                         f"{r['local_max_lsb']:>6} {100 * r['local_flips']:>6.2f}%  {r['status']}{mark}")
        else:
            lines.append(f"{r['index']:>5}  {r['type']:<22} {r['output'][:40]:<40} {_db(r['sqnr_db']):>8}  "
                         f"{r['status']}{mark}")
        last = i
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    # from the catalog, which tests keep equal to the code: building the parser imports no torch
    from .catalog import backends, model_names, precisions, runtimes

    RUNTIMES = runtimes()  # noqa: N806
    models = ", ".join(model_names())
    from .. import __version__

    p = argparse.ArgumentParser(prog="mobilevits", description="Compact vision transformers from PyTorch to phones.")
    p.add_argument("--version", action="version", version=f"mobilevits {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("build-runner", help="compile the native ExecuTorch runner (C++, from the executorch wheel) "
                                            "into the user cache; bench --runtime executorch-native uses it")
    s.add_argument("--target", choices=("host", "aarch64"), default="host",
                   help="host (default) or aarch64 (cross-compiled against the executorch wheel for "
                        "manylinux_2_28_aarch64; runs on qemu-arm64 and ARM Linux boards)")
    s.add_argument("--force", action="store_true", help="rebuild even when the cached build is current")
    s.add_argument("--json", action="store_true", help="print one JSON object for machines")
    s.set_defaults(func=cmd_build_runner)

    s = sub.add_parser("list", help="models with params and MACs, next to the papers' numbers")
    s.add_argument("--resolution", type=_positive_int, help="count MACs at this input size (default: each model's)")
    s.add_argument("--pattern", help="fnmatch filter on names, e.g. 'levit*'")
    s.add_argument("--json", action="store_true", help="print a JSON list for machines")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("convert", help="convert a model and check the artifact against PyTorch",
                       description=f"Models: {models}")
    s.add_argument("model", type=_model_name,
                   help="model name (see `mobilevits list`) or a hub id: hf-hub:OWNER/NAME[@REV], timm/NAME")
    s.add_argument("--to", required=True, type=_backend_list, metavar="BACKEND[,BACKEND...]",
                   help=f"one or more of {','.join(backends())}, comma-separated (several convert side by side)")
    s.add_argument("--jobs", type=_positive_int,
                   help="several backends: conversions at once in worker processes (default: one per core)")
    s.add_argument("--precision", default="fp32", choices=precisions(),
                   help="fp32, int8 (all backends); fp16, w8 (coreml only)")
    s.add_argument("--resolution", type=_positive_int, help="input side in pixels (default: the model's)")
    s.add_argument("--weights", help="checkpoint (.safetensors/.pt/.pth/.pth.tar/.bin) in our, timm's or the official "
                   "code's layout, see docs/checkpoints.md (default: random init, re-randomised norms)")
    s.add_argument("--num-classes", type=_positive_int,
                   help="classes of the model (default: what --weights were made for, else 1000)")
    s.add_argument("--out", default="out", help="output folder (default: out)")
    s.add_argument("--delegate", default="xnnpack", choices=["xnnpack", "coreml"],
                   help="executorch only: XNNPACK (Android/iOS CPU) or Core ML (iOS)")
    s.add_argument("--data", default="photos",
                   help="check data: photos, photo-crops (128), digits, or a folder / ImageFolder")
    s.add_argument("--calibration", default="photos", help="int8 calibration data: photos, digits or a folder")
    s.add_argument("--seed", type=int, default=0, help="random-init seed when no --weights")
    s.add_argument("--labels", help="class names for the sidecar and the apps: imagenet1k (shipped), or a file "
                                    "(one name per line, or a JSON list)")
    s.add_argument("--form", action="append", metavar="KIND=FORM",
                   help="override the backend's deploy formulation (same function, other ops), e.g. "
                        "hardswish=native, dyrelu=max, layernorm_mean=mean; repeatable; docs/conversion.md")
    s.add_argument("--keep-float", action="append", metavar="MODULES",
                   help="int8: leave these modules in float (mixed precision): module names (head, stages.2, "
                        "'stages.*.attn') or class names (Attention); comma-separated or repeated")
    s.add_argument("--no-check", action="store_true", help="skip the accuracy check")
    s.add_argument("--force", action="store_true",
                   help="convert even if --out holds an artifact made from the same inputs (default: reuse it)")
    s.add_argument("--require-full-delegation", action="store_true",
                   help="fail if any operator stays outside the XNNPACK delegate")
    s.add_argument("--json", action="store_true", help="print one JSON object for machines")
    s.set_defaults(func=cmd_convert)

    s = sub.add_parser("check", help="compare an artifact with its PyTorch source on real images")
    s.add_argument("artifact", help=".pte, .tflite or .mlpackage with its sidecar .json beside it")
    s.add_argument("--data", default="photos",
                   help="photos (default; an int8 result below 30 dB runs again on photo-crops), photo-crops (128 "
                        "photos and crops of them), digits, or a folder / ImageFolder")
    s.add_argument("--limit", type=_positive_int, help="use at most this many images")
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--layers", action="store_true",
                   help="Core ML, int8 TFLite and int8 ExecuTorch: compare every op with the PyTorch graph "
                        "and name the first that diverges")
    s.add_argument("--device", default="host",
                   help="run a .pte (native runner) or a .tflite (LiteRT, aarch64) elsewhere: "
                        "qemu-arm64[:CPU] (emulated ARM, default CPU cortex-a76) or ssh:[USER@]HOST[:PORT]; "
                        "default: this host's runtime")
    s.add_argument("--json", action="store_true", help="print one JSON object for machines")
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("predict", help="top-k class names for images, from an artifact or a PyTorch model: "
                                       "the same preprocessing and softmax for both")
    s.add_argument("target", help="an artifact (.pte/.tflite/.mlpackage with its sidecar) or a model name")
    s.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    s.add_argument("--top", type=_positive_int, default=5)
    s.add_argument("--labels", help="imagenet1k, or a file of class names (default: the artifact's sidecar's)")
    s.add_argument("--weights", help="model name only: a state dict to load")
    s.add_argument("--num-classes", type=_positive_int,
                   help="model name only (default: what --weights were made for, else 1000)")
    s.add_argument("--resolution", type=_positive_int, help="model name only (default: the model's)")
    s.add_argument("--device", default="host", help="host (default), qemu-arm64[:CPU] or ssh:[USER@]HOST[:PORT] "
                                                    "(artifacts only)")
    s.add_argument("--json", action="store_true", help="print one JSON object for machines")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("profile", help="per-operator time of a .pte (native runner + ETDump + ExecuTorch's "
                                       "Inspector): kinds, top 10, int8<->fp32 conversions, ops outside XNNPACK")
    s.add_argument("artifact", help=".pte with its sidecar .json beside it (a .tflite: --instructions only)")
    s.add_argument("--device", default="host",
                   help="host (default), qemu-arm64[:CPU] (emulated: shares are the emulator's) or "
                        "ssh:[USER@]HOST[:PORT]")
    s.add_argument("--threads", type=_positive_int, default=1)
    s.add_argument("--warmup", type=_non_negative_int, default=2)
    s.add_argument("--iterations", type=_positive_int, default=5)
    s.add_argument("--etdump", help="also keep the ETDump at this path")
    s.add_argument("--instructions", action="store_true",
                   help="also count instructions per forward (repeatable, load-proof): under valgrind on host, "
                        "with a qemu plugin on qemu-arm64")
    s.add_argument("--functions", action="store_true",
                   help="count instructions per function too (qemu-arm64 only; implies --instructions): LiteRT's "
                        "per-operator profile, its XNNPACK kernels named by the library's symbols")
    s.add_argument("--plot", help="write a PNG of the slowest operator kinds")
    s.add_argument("--json", action="store_true", help="print one JSON object for machines")
    s.set_defaults(func=cmd_profile)

    def add_training_args(s: argparse.ArgumentParser, out: str) -> None:
        s.add_argument("model", type=_model_name, help="model name (see `mobilevits list`) or a hub id")
        s.add_argument("--data", default="digits",
                       help="digits (scikit-learn's handwritten digits) or an ImageFolder (train/ and val/ inside, "
                            "or class folders split 80/20)")
        s.add_argument("--weights", help="float weights to start from: a .pt/.pth/.safetensors/.bin file or a hub id "
                                         "(other class counts get a fresh classifier)")
        s.add_argument("--resolution", type=_positive_int, help="input side (default: the model's)")
        s.add_argument("--epochs", type=_positive_int)
        s.add_argument("--batch-size", type=_positive_int)
        s.add_argument("--lr", type=float)
        s.add_argument("--out", default=out, help=f"run folder: checkpoints and results (default: {out})")
        s.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--train-limit", type=_positive_int, help="use only the first N training images")
        s.add_argument("--augment", default="auto", choices=("auto", "none", "crop-flip"),
                       help="training augmentation: crop-flip (random-resized crop and mirror; auto for folders) "
                            "or none (auto for digits)")
        s.add_argument("--workers", type=_non_negative_int, default=0,
                       help="DataLoader processes decoding a folder's images (default 0: in the main process)")
        s.add_argument("--device", default="auto",
                       help="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps; under torchrun each process "
                            "takes its local rank's GPU")
        s.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"),
                       help="mixed-precision forward pass (fp16 with loss scaling); weights stay float32")
        s.add_argument("--json", action="store_true", help="print one JSON object for machines")

    s = sub.add_parser("train", help="train a float model (AdamW, cosine, label smoothing)")
    add_training_args(s, "out/train")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("qat", help="quantization-aware fine-tuning for a backend, convert, and the accuracy ledger")
    add_training_args(s, "out/qat")
    s.add_argument("--backend", required=True, choices=backends())
    s.add_argument("--float-epochs", type=_positive_int, help="epochs of float training when no --weights")
    s.add_argument("--keep-float", action="append", metavar="MODULES",
                   help="leave these modules in float (mixed precision): module or class names, comma-separated")
    s.add_argument("--no-convert", action="store_true", help="stop after QAT training and the PyTorch ledger")
    s.add_argument("--teacher", metavar="self|MODEL:WEIGHTS|HUB_ID",
                   help="distil from a teacher (self: the float model QAT starts from); QAT runs with and without "
                        "it and the ledger shows both")
    s.add_argument("--kd-alpha", type=float, help="weight of the distillation term (default 0.5)")
    s.add_argument("--kd-temperature", type=float, help="softening temperature of the logits (default 2)")
    s.add_argument("--distillation", choices=("soft", "hard"),
                   help="soft: KL on softened logits (default); hard: cross-entropy with the teacher's top class, "
                        "through the distillation head of LeViT and distilled DeiT (DeiT-style)")
    s.set_defaults(func=cmd_qat)

    s = sub.add_parser("sensitivity", help="int8 cost of each op group quantised alone (rank, --keep-float advice)")
    s.add_argument("model", type=_model_name, help="model name (see `mobilevits list`)")
    s.add_argument("--backend", required=True, choices=backends())
    s.add_argument("--weights", help="trained weights (on random init every group looks alike)")
    s.add_argument("--data", default="digits", help="digits, photos or an ImageFolder (labels add top-1)")
    s.add_argument("--resolution", type=_positive_int, help="input side (default: the model's)")
    s.add_argument("--limit", type=_positive_int, default=256, help="images evaluated (default 256)")
    s.add_argument("--calibration", type=_positive_int, default=32, help="calibration images (default 32)")
    s.add_argument("--groups", action="append", metavar="MODULES",
                   help="module names to test instead of the model's blocks, comma-separated")
    s.add_argument("--plot", help="write a PNG bar chart of the ranking")
    s.add_argument("--json", action="store_true", help="print one JSON object for machines")
    s.set_defaults(func=cmd_sensitivity)

    s = sub.add_parser("export-app-assets", help="copy artifacts into android_demo / ios_demo with a manifest")
    s.add_argument("artifacts", nargs="+", metavar="ARTIFACT", help=".pte, .tflite or .mlpackage with its sidecar")
    s.add_argument("--to", required=True, help="android_demo (.pte XNNPACK, .tflite) or ios_demo (.mlpackage, .pte)")
    s.add_argument("--labels", help="class names, one per line (or a JSON list); default 'class N'")
    s.add_argument("--dest", help="model folder to write instead of the app's own")
    s.add_argument("--replace", action="store_true", help="drop the manifest's other models instead of merging")
    s.add_argument("--json", action="store_true", help="print one JSON object for machines")
    s.set_defaults(func=cmd_export_app_assets)

    s = sub.add_parser("bench", help="latency of artifacts or models on this host, an Android phone or an iPhone")
    s.add_argument("artifacts", nargs="*", metavar="ARTIFACT", help=".pte, .tflite or .mlpackage with its sidecar")
    s.add_argument("--models", help="comma list of models to build and time (see `mobilevits list`)")
    s.add_argument("--resolutions", help="comma list of input sides for --models (default: each model's)")
    s.add_argument("--runtime", type=_runtime_list,
                   help=f"comma list of {', '.join(RUNTIMES)} (torch: PyTorch eager; for --models; default torch)")
    s.add_argument("--precision", default="fp32", choices=precisions())
    s.add_argument("--device", default="host", help=DEVICE_HELP)
    s.add_argument("--threads", type=_int_list, default=[1], help="comma list of thread counts (default 1)")
    s.add_argument("--warmup", type=int, default=10, help="untimed runs per cell (default 10)")
    s.add_argument("--iterations", type=_positive_int, default=50, help="timed runs per cell (default 50)")
    s.add_argument("--cooldown", type=float, default=1.0, help="seconds between cells (default 1)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random cell order and input")
    s.add_argument("--out", default="out/bench", help="folder for built artifacts (default: out/bench)")
    s.add_argument("--csv", help="write one CSV row per cell here")
    s.add_argument("--plot", help="write a PNG of latency vs resolution here")
    _add_device_tool_options(s)
    s.add_argument("--json", action="store_true", help="print one JSON object for machines")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("findings", help="the papers' resolution-vs-speed findings, reproduced yes/no per runtime")
    s.add_argument("--runtime", default="executorch", type=_runtime_list,
                   help=f"comma list of {', '.join(RUNTIMES)} (default executorch)")
    s.add_argument("--precision", default="fp32", choices=precisions())
    s.add_argument("--device", default="host", help=DEVICE_HELP)
    s.add_argument("--threads", type=_positive_int, default=1, help="threads per cell (default 1, as the papers)")
    s.add_argument("--warmup", type=int, default=5, help="untimed runs per cell (default 5)")
    s.add_argument("--iterations", type=_positive_int, default=20, help="timed runs per cell (default 20)")
    s.add_argument("--cooldown", type=float, default=0.5, help="seconds between cells (default 0.5)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random cell order and input")
    s.add_argument("--out", default="out/findings", help="folder for artifacts and findings.json")
    s.add_argument("--rebuild", action="store_true", help="convert again even when --out holds matching artifacts")
    s.add_argument("--repeats", type=_positive_int, default=3,
                   help="sessions of the whole sweep; a cell's latency is the median of session medians (default 3)")
    s.add_argument("--plot", help="write a PNG of latency vs resolution here")
    _add_device_tool_options(s)
    s.add_argument("--json", action="store_true", help="print a JSON list, one object per finding and runtime")
    s.set_defaults(func=cmd_findings)

    s = sub.add_parser("demo", help="the main job on embedded defaults (what `make demo` runs)")
    s.add_argument("--out", default="out/demo")
    s.add_argument("--full", action="store_true", help="the whole walkthrough: model table, fp32 and QAT int8 "
                   "for every backend with the accuracy ledger, app assets, resolution sweep (make demo-full)")
    s.add_argument("--jobs", type=_positive_int, help="conversions at once (default: one per core)")
    s.add_argument("--fast", action="store_true", help="tiny model, small resolution (for a smoke test)")
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # keep TensorFlow-Lite INFO lines off the terminal
    parser = build_parser()
    args = parser.parse_args(argv)
    return run(args.func, args)


def run(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return func(args)
    except KeyboardInterrupt as e:
        print(f"mobilevits: {e or 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as e:
        # the converters' and weights' error classes load with torch: classify only once something failed
        from converters import ConversionError, RuntimeUnavailableError, UnsupportedError

        from ..weights import WeightsError

        if isinstance(e, (UnsupportedError, WeightsError, FileNotFoundError, PermissionError, ValueError)):
            print(f"mobilevits: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if isinstance(e, (ConversionError, RuntimeUnavailableError, OSError, CliError)):
            print(f"mobilevits: error: {e}", file=sys.stderr)
            return getattr(e, "code", EXIT_FAILED)
        raise


if __name__ == "__main__":
    sys.exit(main())

"""int8 that pays (issue #19): int8 / fp32 latency per model and backend, before and after the int8 deploy forms.

    .venv/bin/python benchmarks/int8_forms.py [--models all|m1,m2] [--backends executorch,tflite] [--rounds 3]
                                              [--after default|rewrites]

For each model and backend it converts (or reuses, from ``--out``) three artifacts: fp32; int8 "before": the
one-kernel forms (``hardswish=native``, ``dyrelu=max``: a hardswish / maximum kernel, which ExecuTorch's XNNPACK
runs in fp32 between a dequantise and a quantise, and LiteRT runs outside its delegate) with an int8 boundary
around every quantisable op, as every backend did before issue #19; and int8 "after": with ``--after rewrites``
the int8 rewrites (``hardswish=int8``, ``dyrelu=relu``), from which each backend's default was decided
(``Converter.prepare_model``); with ``--after default`` (the default) what each backend does now, so the table shows
what a user gets. ExecuTorch's "after" also keeps an add or mul between float-only ops in float
(``converters.base.merge_float_islands``); TFLite's gives one-element constants their op's rank so that
litert-torch keeps those ops in NHWC (``converters.tflite_backend._rank_matched_scalars``), lets litert-torch's
quantizer see the adds, muls and pools of image tensors (``_with_source_fns``) and merges float islands too.
Where two columns are the same program it is converted once.
``--convert-only`` stops after converting (to time later, on a quiet machine). Every int8 artifact is checked under
the int8 rule. All artifacts are then timed side by side in one process (``mobilevits bench``: one thread,
cells shuffled, ``--rounds`` sessions, median of session medians), and each ExecuTorch int8 program is
profiled through the native runner (int8<->fp32 Converts, operator kinds still in fp32). Writes
benchmarks/results/int8_forms.json and prints the Markdown tables of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters import atomic_write_text, check_artifact, convert, read_sidecar  # noqa: E402
from mobilevits.workflows.bench import bench, host_environment  # noqa: E402
from mobilevits.workflows.profile import profile_artifact  # noqa: E402

MODELS = "mobilevit_xxs,levit_128s,mobile_former_294m,mobilenetv3_large_100,efficientnet_b0,sepvit_lite"
# the 21 models of the six families issue #19 measures (the seed transformers have their own benchmark)
FAMILIES = ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "levit_128s", "levit_128", "levit_192", "levit_256",
            "levit_384", "mobile_former_26m", "mobile_former_52m", "mobile_former_96m", "mobile_former_151m",
            "mobile_former_214m", "mobile_former_294m", "mobile_former_508m", "mobilenetv3_small_075",
            "mobilenetv3_small_100", "mobilenetv3_large_075", "mobilenetv3_large_100", "efficientnet_b0", "sepvit_lite"]
# one kernel each: the forms every backend got before issue #19
BEFORE = {"hardswish": "native", "dyrelu": "max", "silu": "native"}
# the exact int8 rewrites of the activations neither XNNPACK has in int8 (SiLU has none: its sigmoid form is
# a choice for LiteRT alone, counted as a --form variant)
AFTER = {"hardswish": "int8", "dyrelu": "relu", "silu": "native"}
SUFFIX = {"executorch": ".pte", "tflite": ".tflite"}
IGEMM_GAP = 2.59  # ExecuTorch / LiteRT time of one dense 3x3 convolution (benchmarks/runtime_kernels.py, 2026-12-02)


def artifact(model: str, backend: str, variant: str, out: Path) -> Path:
    """Convert once into ``out/<variant>/``; reuse what exists, and what another variant's identical program is.

    ``int8-before``: the one-kernel forms and per-op int8 boundaries, what every backend did before issue #19;
    ``int8-after``: the int8 rewrites; ``int8-default``: what the backend does now. ExecuTorch's ``after`` and
    ``default`` keep an add/mul between float-only ops float (``merge_float_islands``). ``int8-KIND=FORM[,...]``:
    what the backend does now with those forms instead of its own (``variant_forms``)."""
    precision = "fp32" if variant == "fp32" else "int8"
    custom = variant_forms(variant)
    if precision == "int8" and custom is None:
        same = _program_key(model, backend, variant)
        first = next(v for v in ("int8-before", "int8-after", "int8-default")
                     if _program_key(model, backend, v) == same)
        if first != variant:
            return artifact(model, backend, first, out)  # one program serves both columns
    folder = out / variant
    existing = sorted(folder.glob(f"{model}_*_{backend}_{precision}{SUFFIX[backend]}"))
    if existing and Path(str(existing[0]) + ".json").is_file():
        if precision == "int8" and read_sidecar(existing[0]).get("check") is None:
            check_artifact(existing[0], show_progress=False)  # a copied-in artifact: check it once
        return existing[0]
    from converters.executorch_backend import ExecuTorchConverter
    from converters.tflite_backend import TFLiteConverter

    t0 = time.time()
    now = variant != "int8-before"  # "before": none of the int8 passes of issue #19
    ExecuTorchConverter.merge_islands = TFLiteConverter.merge_islands = now
    TFLiteConverter.nhwc_constants = TFLiteConverter.source_fns = now
    try:
        r = convert(model, to=backend, precision=precision, out=folder, check=precision == "int8",
                    forms={"int8-before": BEFORE, "int8-after": AFTER}.get(variant, custom), show_progress=False)
    finally:
        ExecuTorchConverter.merge_islands = TFLiteConverter.merge_islands = True
        TFLiteConverter.nhwc_constants = TFLiteConverter.source_fns = True
    print(f"  converted {model} {backend} {variant} in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return Path(r["artifact"])


def variant_forms(variant: str) -> dict[str, str] | None:
    """The forms of an ``int8-KIND=FORM[,KIND=FORM]`` variant (e.g. ``int8-hardswish=native``), else None."""
    if not variant.startswith("int8-") or "=" not in variant:
        return None
    return dict(kv.split("=", 1) for kv in variant.removeprefix("int8-").split(","))


def _program_key(model: str, backend: str, variant: str) -> tuple:
    """What decides an int8 program: the forms of the kinds ``model`` has, and (ExecuTorch, where ``model`` has
    an add/mul between float-only ops) whether those stay float."""
    forms = {"int8-before": _forms_of(model, BEFORE), "int8-after": _forms_of(model, AFTER),
             "int8-default": default_forms(model, backend)}[variant]
    # TFLite's "after" always differs: its quantizer now sees the adds and muls every model has
    merged = variant != "int8-before" and (backend == "tflite" or _merges(model) > 0)
    return tuple(sorted(forms.items())), merged


def _int8_graph(model: str, backend: str):
    """``model`` as ``backend``'s int8 conversion exports it (its default forms, re-parameterised), and the quantizer
    that conversion uses."""
    import torch

    import mobilevits
    from converters import get_converter

    conv = get_converter(backend)
    m = conv.prepare_model(mobilevits.create_model(model).eval(), "int8")
    mobilevits.reparameterize_model(m)
    r = mobilevits.get_model_info(model).default_resolution
    return torch.export.export(m, (torch.randn(1, 3, r, r),)).module(), conv.quantizer("int8")


@functools.cache
def _merges(model: str) -> int:
    """How many ops ExecuTorch's int8 quantizer keeps float between float-only ops in ``model``."""
    graph, quantizer = _int8_graph(model, "executorch")
    quantizer.annotate(graph)
    return len(quantizer.merged_float_ops)


def _has_kinds(model: str, forms: dict[str, str]) -> bool:
    """Does ``model`` contain a module of any kind in ``forms`` (so its int8 program differs by formulation)?"""
    import mobilevits
    from mobilevits.layers import deploy_forms

    return bool(set(deploy_forms(mobilevits.create_model(model))) & set(forms))


def default_forms(model: str, backend: str) -> dict[str, str]:
    """The deploy forms ``backend`` gives ``model`` in int8 by default (its ``prepare_model``), by kind."""
    import mobilevits
    from converters import get_converter
    from mobilevits.layers import deploy_forms

    m = get_converter(backend).prepare_model(mobilevits.create_model(model), "int8")
    return {k: v for k, v in deploy_forms(m).items() if k in BEFORE}


def _forms_of(model: str, forms: dict[str, str]) -> dict[str, str]:
    """``forms`` restricted to the kinds ``model`` has."""
    import mobilevits
    from mobilevits.layers import deploy_forms

    return {k: forms[k] for k in deploy_forms(mobilevits.create_model(model)) if k in forms}


def outside(meta: dict) -> str:
    """Operators an int8 artifact runs outside int8: TFLite's ops outside its delegate (from the sidecar)."""
    ops = (meta.get("delegation") or {}).get("not_delegated_ops") or {}
    return ", ".join(f"{k} x{v}" for k, v in sorted(ops.items())) or "none"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS, help="comma-separated, or 'all' (the 21 models of the six families)")
    ap.add_argument("--after", choices=("default", "rewrites"), default="default",
                    help="int8 'after': the forms each backend now takes, or the int8 rewrites everywhere")
    ap.add_argument("--backends", default="executorch,tflite")
    ap.add_argument("--rounds", type=int, default=3, help="bench sessions, cells shuffled in each")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--convert-only", action="store_true", help="convert (and check) what is missing, then stop")
    ap.add_argument("--out", type=Path, default=ROOT / "out/int8_forms")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/int8_forms.json")
    args = ap.parse_args()
    if args.models == "all":
        args.models = ",".join(FAMILIES)
    models, backends = args.models.split(","), args.backends.split(",")
    after = "int8-after" if args.after == "rewrites" else "int8-default"
    arts: dict[tuple[str, str, str], Path] = {}
    for model in models:
        for backend in backends:
            for variant in ("fp32", "int8-before", after):
                arts[(model, backend, variant)] = artifact(model, backend, variant, args.out)
    if args.convert_only:
        return 0
    # side by side: every artifact in each session, shuffled; median of the session medians
    medians: dict[str, list[float]] = {str(p): [] for p in arts.values()}
    for k in range(args.rounds):
        result = bench(artifacts=list(arts.values()), warmup=5, iterations=args.iterations, seed=k,
                       out=args.out / "bench", log=lambda s: None)
        for cell in result["cells"]:
            medians[cell["artifact"]].append(cell["stats"]["median_ms"])
    rows = []
    for (model, backend, variant), path in arts.items():
        meta = read_sidecar(path)
        row = {"model": model, "backend": backend, "variant": variant, "artifact": str(path),
               "ms": statistics.median(medians[str(path)]), "session_ms": medians[str(path)],
               "formulation": meta.get("formulation"), "outside": outside(meta),
               "check": (meta.get("check") or {}).get("passed"), "sqnr_db": (meta.get("check") or {}).get("sqnr_db")}
        if backend == "executorch" and variant == "fp32":
            # dense convolutions ("IGEMM"): the one kernel measured 2.6x slower in ExecuTorch's XNNPACK build than
            # in LiteRT's at equal shapes (BENCHMARKS.md, "ExecuTorch vs LiteRT on single operators")
            p = profile_artifact(path, iterations=10)
            row["igemm_share"] = sum(k["share"] for k in p["kinds"] if k["kind"] == "Convolution (NHWC, F32) IGEMM")
            row["fp32_top"] = [{"kind": k["kind"], "share": k["share"]} for k in p["kinds"][:3]]
        if backend == "executorch" and variant != "fp32":
            p = profile_artifact(path, iterations=10)
            row["converts"] = p["convert"]["count"]
            row["convert_share"] = p["convert"]["share"]
            # operator kinds an int8 program still runs in fp32 (XNNPACK names carry the datatype: "... F32)")
            row["fp32_kinds"] = [{"kind": k["kind"], "count": k["count"], "share": k["share"]} for k in p["kinds"]
                                 if "F32" in k["kind"] and not k["kind"].startswith("Convert")]
        rows.append(row)
    doc = {"environment": host_environment(), "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds,
           "iterations": args.iterations, "after": args.after, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(doc, indent=1) + "\n")
    by = {(r["model"], r["backend"], r["variant"]): r for r in rows}
    print("| model | backend | fp32 ms | int8 before ms (/fp32) | int8 after ms (/fp32) | still outside int8 "
          "(before -> after) | int8 check after |")
    print("|---|---|---:|---:|---:|---|---|")
    for model in models:
        for backend in backends:
            f, b, a = (by[(model, backend, v)] for v in ("fp32", "int8-before", after))
            if backend == "executorch":
                still = f"{b['converts']} -> {a['converts']} Converts ({100 * a['convert_share']:.0f}% of time)"
            else:
                still = f"{b['outside']} -> {a['outside']}"
            check = f"{'pass' if a['check'] else 'FAIL'} {a['sqnr_db']:.1f} dB" if a["sqnr_db"] is not None else "-"
            print(f"| {model} | {backend} | {f['ms']:.2f} | {b['ms']:.2f} ({b['ms'] / f['ms']:.2f}) | "
                  f"{a['ms']:.2f} ({a['ms'] / f['ms']:.2f}) | {still} | {check} |")
    print("\nExecuTorch int8 (after): operator kinds still in fp32, share of the forward")
    print("| model | fp32 operator kinds (count, share) |")
    print("|---|---|")
    for model in models:
        a = by.get((model, "executorch", after))
        if a:
            kinds = ", ".join(f"{k['kind']} x{k['count']} {100 * k['share']:.0f}%" for k in a["fp32_kinds"][:5])
            print(f"| {model} | {kinds or 'none'} |")
    if set(backends) >= {"executorch", "tflite"}:
        print("\nfp32, ExecuTorch against LiteRT (same side-by-side sessions)")
        print("| model | ExecuTorch fp32 ms | LiteRT fp32 ms | ET / LiteRT | ET dense-conv share | ET / LiteRT with "
              "ET's dense convs at LiteRT's speed |")
        print("|---|---:|---:|---:|---:|---:|")
        for model in models:
            f = by[(model, "executorch", "fp32")]
            e, t, share = f["ms"], by[(model, "tflite", "fp32")]["ms"], f.get("igemm_share", 0.0)
            same_conv = e * (1 - share * (1 - 1 / IGEMM_GAP))  # ET's time if its dense convs ran as LiteRT's
            print(f"| {model} | {e:.2f} | {t:.2f} | {e / t:.2f} | {100 * share:.0f}% | {same_conv / t:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

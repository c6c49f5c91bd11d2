"""Training on a folder streams (issue #20): peak memory flat in the data set's size, throughput per worker count.

    .venv/bin/python benchmarks/streaming_data.py                     # 1k and 20k JPEGs, 0/1/2 workers
    .venv/bin/python benchmarks/streaming_data.py --sizes 1000 --workers 0

Generates ImageFolders (10 classes; 160 px JPEG crops of scikit-image's photos, a random 30-100% of each side,
half mirrored; fixed by the seed; kept in --out and reused), then runs ``mobilevits train MODEL --data DIR --epochs
1 --workers W --json`` in a fresh process per cell and samples, every 50 ms, the resident memory of that process
and its DataLoader workers (/proc: proportional set size summed over the tree, so pages the workers share with
the main process count once, and the main process's VmHWM, its peak RSS). Throughput is the
epoch's training images over its training seconds (``history[0]``: batches only, evaluation excluded). Raw results
go to ``benchmarks/results/streaming_data.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from converters import atomic_write_text  # noqa: E402
from mobilevits.workflows.bench import host_environment  # noqa: E402

SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
           "colorwheel", "camera", "brick")


def make_folder(root: Path, count: int, side: int = 160, seed: int = 0) -> Path:
    """``count`` JPEGs in 10 class folders (class k: crops of photo k); reused when complete."""
    import numpy as np
    import skimage.data
    from PIL import Image

    done = root / ".complete"
    if done.is_file():
        return root
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in SOURCES]
    for i in range(count):
        c = i % len(photos)
        im = photos[c]
        w, h = im.size
        cw, ch = (max(16, int(s * rng.uniform(0.3, 1.0))) for s in (w, h))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        crop = im.crop((left, top, left + cw, top + ch)).resize((side, side), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        crop.save(folder / f"{i:06d}.jpg", quality=90)
    done.write_text(str(count))
    return root


def _status_kb(pid: int, field: str, source: str = "status") -> int:
    try:
        for line in Path(f"/proc/{pid}/{source}").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/*/stat parent ids)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parents[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out, frontier = [pid], [pid]
    while frontier:
        frontier = [c for c, p in parents.items() if p in frontier]
        out += frontier
    return out


def run_cell(model: str, data: Path, resolution: int, workers: int, out: Path) -> dict:
    """One training epoch in a fresh process: peak memory (MB) and throughput."""
    cmd = [sys.executable, "-m", "mobilevits", "train", model, "--data", str(data), "--resolution", str(resolution),
           "--epochs", "1", "--workers", str(workers), "--out", str(out), "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    peak_tree, hwm = 0, 0
    while proc.poll() is None:
        # proportional set size: the workers share torch's pages with the main process, RSS would count them twice
        peak_tree = max(peak_tree, sum(_status_kb(p, "Pss", "smaps_rollup") for p in _tree(proc.pid)))
        hwm = max(hwm, _status_kb(proc.pid, "VmHWM"))
        time.sleep(0.05)
    stdout = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    result = json.loads(stdout)
    h = result["history"][0]
    return {"workers": workers, "train_images": h["train_images"], "train_seconds": h["train_seconds"],
            "images_per_s": h["train_images"] / h["train_seconds"], "epoch_seconds": h["seconds"],
            "wall_seconds": round(time.perf_counter() - t0, 1), "peak_tree_mb": peak_tree / 1024,
            "peak_main_mb": hwm / 1024, "val_images": result["val_data"]["images"], "val_top1": result["val_top1"]}


def table(rows: list[dict]) -> list[str]:
    lines = ["| images | workers | train images/s | epoch s (with evaluation) | peak RSS, main process MB | "
             "peak PSS, with workers MB |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['images']} | {r['workers']} | {r['images_per_s']:.1f} | {r['epoch_seconds']:.0f} | "
                     f"{r['peak_main_mb']:.0f} | {r['peak_tree_mb']:.0f} |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,20000", help="images per generated folder, comma-separated")
    ap.add_argument("--workers", default="0,1,2", help="DataLoader worker counts, comma-separated")
    ap.add_argument("--model", default="mobilevit_tiny")
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--out", type=Path, default=ROOT / "out/streaming_data")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/streaming_data.json")
    args = ap.parse_args()
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        folder = make_folder(args.out / f"folder_{size}", size)
        print(f"folder of {size} images ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        for workers in (int(w) for w in args.workers.split(",")):
            row = {"images": size, **run_cell(args.model, folder, args.resolution, workers,
                                               args.out / f"run_{size}_{workers}")}
            print("  " + json.dumps(row), file=sys.stderr, flush=True)
            rows.append(row)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    doc = {"environment": host_environment(), "date": time.strftime("%Y-%m-%d"), "commit": commit.stdout.strip(),
           "model": args.model, "resolution": args.resolution, "rows": rows}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.json, json.dumps(doc, indent=1) + "\n")
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Render a `mobilevits findings` result (findings.json) as the Markdown tables in BENCHMARKS.md.

    mobilevits findings --runtime executorch,tflite --out out/findings --plot out/findings/findings.png
    .venv/bin/python benchmarks/findings_report.py out/findings/findings.json > /tmp/findings.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mobilevits.workflows.findings import summary  # noqa: E402


def render(result: dict) -> str:
    bench = result["bench"]
    env = bench["environment"]
    settings = bench["settings"]
    lines = [f"Host: {env['cpu']} ({env['cpu_count']} cores), {settings['iterations']} timed runs after "
             f"{settings['warmup']} warm-up per cell, {bench.get('sessions', 1)} session(s) in random order "
             f"(seeds {settings.get('seeds', [settings['seed']])}), one thread; latency = median of session "
             "medians. Commit " + str(env.get("git_commit"))[:10] + ".", "",
             "| finding | runtime | reproduced | measured |", "|---|---|---|---|"]
    for f in result["findings"]:
        lines.append(f"| {f['id']} | {f['runtime']} | {'yes' if f['reproduced'] else '**no**'} | {summary(f)} |")
    runtimes = sorted({c["runtime"] for c in bench["cells"]})
    for rt in runtimes:
        cells = [c for c in bench["cells"] if c["runtime"] == rt]
        models = sorted({c["model"] for c in cells})
        res = sorted({c["resolution"] for c in cells})
        lat = {(c["model"], c["resolution"]): c["stats"]["median_ms"] for c in cells}
        lines += ["", f"Median latency (ms), {rt} fp32, 1 thread:", "",
                  "| model | " + " | ".join(str(r) for r in res) + " |", "|---|" + "---:|" * len(res)]
        for m in models:
            lines.append(f"| {m} | " + " | ".join(f"{lat[(m, r)]:.1f}" if (m, r) in lat else "" for r in res) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("findings_json")
    args = ap.parse_args()
    print(render(json.loads(Path(args.findings_json).read_text())))


if __name__ == "__main__":
    main()

"""The README's results rows from run folders brought back by collect_rows.sh.

    python scripts/gpu/rows.py runs/sun-final-resnet34 runs/ebrahimi-net1 ...

Each row: preset, the paper's val top-1, ours (val top-1 / top-5 of the best checkpoint), epochs,
minutes and img/s from metrics.jsonl, and the gap to the paper (a row more than 2 points below
the paper wants an explanation beside it in the README).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from common.cli import Parser, fail

# Val top-1 the papers report. Sun ("ResNet on Tiny ImageNet") gives errors: 48% (§4, vanilla,
# 15,000 iterations), 43.7% (§5.3 and §10, improved), 34.68% (§7, final); Ebrahimi & Abadi
# ("Study of Residual Networks for Image Recognition") Table 1.
# Sun's variant comparison (§5.4) is only drawn in his Figure 10: no number to copy.
PAPER_TOP1 = {
    "sun-vanilla-resnet34": 52.0,
    "sun-improved-resnet34": 56.3,
    "sun-final-resnet34": 65.32,
    "ebrahimi-net1": 49.0,
    "ebrahimi-net6": 36.0,
}


def row(run: Path) -> str:
    name = run.name
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = history[-1]
    ev = run / "evaluation.json"
    if ev.exists():
        e = json.loads(ev.read_text())
        top1, top5 = 100 * (1 - e["top1_error"]), 100 * (1 - e["top5_error"])
    else:  # the lease ended before the evaluation: the run's own last val figures
        top1, top5 = 100 * (1 - last["val_top1_error"]), 100 * (1 - last["val_top5_error"])
    paper = PAPER_TOP1.get(name)
    gap = f"{top1 - paper:+.1f}" if paper is not None else ""
    rate = statistics.median(h["img_per_s"] for h in history)
    shown = f"{paper:g}%" if paper is not None else "—"
    if name.startswith("sun-resnet"):
        shown = "Figure 10 only"
    return (
        f"| `{name}` | {shown} | "
        f"{top1:.2f}% / {top5:.2f}% | {last['epoch']:.1f} | {last['seconds'] / 60:.1f} | "
        f"{rate:,.0f} | {gap} |"
    )


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python scripts/gpu/rows.py", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (metrics.jsonl inside)")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "metrics.jsonl").is_file()]
    if missing:
        return fail(f"no metrics.jsonl in {', '.join(missing)}")
    print("| preset | paper top-1 | ours top-1 / top-5 | epochs | minutes | img/s | gap |")
    print("|---|---|---|---|---|---|---|")
    for run in args.runs:
        print(row(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())

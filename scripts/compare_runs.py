"""One figure comparing runs' curves, as the papers draw them (Ebrahimi & Abadi Figures 6-7: train
and val accuracy of a ResNet against its plain ConvNet twin; Sun Figures 5 and 8), and their
README rows: final val top-1 from each run's one evaluation, train top-1 from its last epoch.

    python scripts/compare_runs.py ~/tin-runs/ebrahimi-resnet7 ~/tin-runs/ebrahimi-convnet7 \\
        --out docs/shallow7.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.cli import Parser, fail  # noqa: E402


def history(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]


def row(run: Path) -> str:
    h = history(run)
    ev = json.loads((run / "eval" / "evaluation.json").read_text())
    return (
        f"| `{run.name}` | {100 * (1 - ev['top1_error']):.2f}% | "
        f"{100 * (1 - h[-1]['train_top1_error']):.2f}% | {h[-1]['epoch']:.0f} | "
        f"{h[-1]['seconds'] / 60:.0f} |"
    )


def plot(runs: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        h = history(run)
        epochs = [r["epoch"] for r in h]
        for split, style in (("train", "--"), ("val", "-")):
            line = ax1.plot(epochs, [100 * (1 - r[f"{split}_top1_error"]) for r in h], style,
                            label=f"{run.name} {split}")  # fmt: skip
            ax2.plot(epochs, [r[f"{split}_loss"] for r in h], style, color=line[0].get_color(),
                     label=f"{run.name} {split}")  # fmt: skip
    ax1.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    ax2.set(xlabel="epoch", ylabel="loss", title="loss")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python scripts/compare_runs.py", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (metrics.jsonl, eval/)")
    p.add_argument("--out", type=Path, help="the figure (PNG)")
    args = p.parse_args(argv)
    missing = [str(r) for r in args.runs if not (r / "eval" / "evaluation.json").is_file()]
    if missing:
        return fail(f"no finished, evaluated run in {', '.join(missing)}")
    for run in args.runs:
        print(row(run))
    if args.out:
        plot(args.runs, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

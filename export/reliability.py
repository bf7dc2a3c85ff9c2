"""python -m export.reliability --model models/model.onnx --data PATH [--out docs/]

How far the model's probabilities can be trusted, on the val images its temperature was not
fitted on (export/calibration.py `halves`): a reliability diagram (accuracy against confidence,
before and after the temperature) and a selective-prediction curve (top-1 of the most confident
x% of images), written as docs/reliability.png and docs/selective.png; and a table of the
calibration methods tried, each fitted on the other half: the temperature the export folds in
(fitted by the Brier score), the same fitted by NLL (Guo et al.'s objective), one chosen for the
lowest ECE, and vector scaling (a scale and a bias per class, Guo et al. 2017), which can change
rankings and so is reported, not used.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common.cli import ConfigError, Parser, fail
from export import calibration as K


def parse(argv=None):
    p = Parser(prog="python -m export.reliability", description=__doc__.split("\n\n")[1])
    p.add_argument("--model", default="models/model.onnx", help="an exported fp32 model")
    p.add_argument("--data", required=True, help="Tiny ImageNet zip or folder (its val images)")
    p.add_argument("--out", default="docs", help="folder for reliability.png and selective.png")
    return p.parse_args(argv)


def raw_logits(model: Path, data) -> tuple[np.ndarray, np.ndarray, dict | None]:
    """(the logits without the model's temperature, the val labels, its calibration record)."""
    from export import onnx_export as E
    from inference.backend import read_card

    card = read_card(model)
    _, (x, y) = E.load_val(data, card.wnids)
    logits = E.run_onnx(E.session(model), x)
    t = (card.calibration or {}).get("temperature", 1.0)
    return logits.astype(np.float64) * t, y, card.calibration


def temperature_by_ece(logits, labels) -> float:
    grid = np.exp(np.linspace(np.log(0.3), np.log(1.5), 121))
    return float(min(grid, key=lambda t: K.ece(K.softmax(logits / t), labels)))


def vector_scaling(logits, labels):
    """(a, b) per class minimising NLL(a * logits + b): scipy's L-BFGS from a = 1/T, b = 0."""
    from scipy.optimize import minimize

    n, k = logits.shape
    onehot = np.eye(k)[labels]

    def loss(theta):
        a, b = theta[:k], theta[k:]
        z = logits * a + b
        z = z - z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        value = -np.log(p[np.arange(n), labels] + 1e-300).mean()
        g = (p - onehot) / n
        return value, np.r_[(g * logits).sum(0), g.sum(0)]

    start = np.r_[np.full(k, 1 / K.fit_temperature(logits, labels, "nll")), np.zeros(k)]
    theta = minimize(loss, start, jac=True, method="L-BFGS-B").x
    return theta[:k], theta[k:]


def methods(logits, labels) -> dict[str, np.ndarray]:
    """Each method's calibrated logits on the judged half, fitted on the fit half."""
    fit, judge = K.halves(labels)
    t = K.fit_temperature(logits[fit], labels[fit], "brier")
    t_nll = K.fit_temperature(logits[fit], labels[fit], "nll")
    t_ece = temperature_by_ece(logits[fit], labels[fit])
    a, b = vector_scaling(logits[fit], labels[fit])
    z = logits[judge]
    return {
        "none": z,
        f"temperature by Brier score (T = {t:.3f}; the export's)": z / t,
        f"temperature by NLL (T = {t_nll:.3f}; Guo et al.'s)": z / t_nll,
        f"temperature by ECE (T = {t_ece:.3f})": z / t_ece,
        "vector scaling (200 scales, 200 biases)": z * a + b,
    }


def table(found: dict[str, np.ndarray], labels) -> str:
    rows = ["| method | top-1 | mean confidence | ECE | NLL | Brier |", "|---|--:|--:|--:|--:|--:|"]
    for name, z in found.items():
        f = K.figures(z, labels)
        rows.append(
            f"| {name} | {f['top1']:.2%} | {f['mean_confidence']:.2%} | {f['ece']:.2%} | "
            f"{f['nll']:.4f} | {f['brier']:.4f} |"
        )
    return "\n".join(rows)


def plot(before, after, labels, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    edges = np.linspace(0, 1, K.BINS + 1)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for name, z, style in (("before", before, "o-"), ("after (temperature)", after, "s-")):
        p = K.softmax(z)
        conf, right = p.max(1), p.argmax(1) == labels
        which = K.bin_of(conf)
        xs = [conf[which == b].mean() for b in range(K.BINS) if (which == b).sum() >= 10]
        ys = [right[which == b].mean() for b in range(K.BINS) if (which == b).sum() >= 10]
        ax.plot(xs, ys, style, label=f"{name}: ECE {K.ece(p, labels):.1%}")
    ax.set(xlabel="top-1 probability (bins of 1/15, 10+ images)", ylabel="top-1 accuracy",
           xlim=(0, 1), ylim=(0, 1), title="Reliability on val images not fitted on")  # fmt: skip
    ax.set_xticks(edges[::3])
    ax.legend(loc="upper left")
    fig.tight_layout()
    paths = [out / "reliability.png", out / "selective.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    _, accuracy, coverage = K.coverage_curve(K.softmax(after), labels)
    ax.plot(100 * coverage, 100 * accuracy)
    chosen = [s for s in K.selective(K.softmax(after), labels) if s["min_confidence"] is not None]
    for i, s in enumerate(chosen):
        where, text_at = (100 * s["coverage"], 100 * s["top1"]), (3, 62 - 6 * i)
        ax.annotate(f"min_confidence {s['min_confidence']:.2f}: {s['top1']:.0%} top-1 on the "
                    f"{s['coverage']:.0%} answered", where, xytext=text_at,
                    arrowprops={"arrowstyle": "->", "color": "C1"})  # fmt: skip
        ax.plot(*where, "o", color="C1")
    ax.set(xlabel="images answered, most confident first (%)", ylabel="top-1 of those (%)",
           ylim=(50, 101), xlim=(0, 101))  # fmt: skip
    ax.set_title("Selective prediction, val images not fitted on")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    args = parse(argv)
    from export.onnx_export import ExportError
    from inference.backend import ModelFileError
    from inference.contract import ContractError
    from training.data import DataError

    try:
        logits, labels, record = raw_logits(Path(args.model), args.data)
    except (ConfigError, ContractError, DataError, ExportError, ModelFileError, OSError) as e:
        return fail(e)
    found = methods(logits, labels)
    _, judge = K.halves(labels)
    print(f"{len(judge)} val images the calibration was not fitted on ({args.model}):")
    print(table(found, labels[judge]))
    shipped = logits[judge] / (record or {}).get("temperature", 1.0)
    for s in K.selective(K.softmax(shipped), labels[judge]):
        print(f"top-1 {s['top1']:.0%}: min_confidence {s['min_confidence']}, answering "
              f"{s['coverage']:.1%} of images")  # fmt: skip
    paths = plot(logits[judge], shipped, labels[judge], Path(args.out))
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

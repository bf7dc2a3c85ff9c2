"""Here, after a lease: what `lease.sh collect` brought back, checked, exported and shipped.

    python scripts/gpu/ship.py BROUGHT_BACK --data tiny-imagenet-200.zip [--models models]

Joins model.pt.part*, checks the hash, unpacks run.tar.gz, evaluates the checkpoint once on the
local val half and compares it with the shipped model's val top-1 (models/model.export.json). A
model that does not beat it is reported, not shipped (exit 1). Otherwise: `python -m export
--weights fp16 --int8` into a staging folder, then into models/ with the slim checkpoint, the
run's metrics and curves, a card (models/README.md) and a dated row in docs/LOG.md.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.cli import Parser, fail  # noqa: E402


def refuse(message: str):
    """The CLIs' convention (common/cli.py): one `error: ...` line, exit status 2."""
    raise SystemExit(fail(message))


def join(back: Path) -> Path:
    """model.pt from its pieces, refused unless its SHA-256 is the one computed on the machine."""
    pieces = sorted(back.glob("model.pt.part*"))
    if not pieces:
        refuse(f"no model.pt.part* in {back}")
    ckpt = back / "model.pt"
    with ckpt.open("wb") as f:
        for piece in pieces:
            f.write(piece.read_bytes())
    want = (back / "model.pt.sha256").read_text().split()[0]
    got = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    if got != want:
        refuse(f"model.pt's SHA-256 {got} is not the machine's {want}")
    if (back / "run.tar.gz").exists():
        with tarfile.open(back / "run.tar.gz") as t:
            t.extractall(back / "run", filter="data")
    return ckpt


def shipped_top1(models: Path) -> float:
    card = models / "model.export.json"
    if not card.exists():
        return 0.0
    return float(json.loads(card.read_text())["fp32"].get("val_top1") or 0.0)


def evaluate(ckpt: Path, data: Path, out: Path) -> dict:
    cmd = [sys.executable, "-m", "training.evaluate", "--checkpoint", str(ckpt), "--data",
           str(data), "--out", str(out), "--device", "cpu"]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "evaluation.json").read_text())


def export(ckpt: Path, data: Path, stage: Path, int8: bool) -> None:
    cmd = [sys.executable, "-m", "export", "--checkpoint", str(ckpt), "--data", str(data),
           "--out", str(stage / "model.onnx"), "--weights", "fp16", "--no-bench"]  # fmt: skip
    subprocess.run([*cmd, "--int8"] if int8 else cmd, cwd=ROOT, check=True)


def card(ev: dict, run: Path, previous: float) -> str:
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    last = history[-1] if history else {}
    speed = json.loads((run / "speed.json").read_text()) if (run / "speed.json").exists() else {}
    top1, top5 = 100 * (1 - ev["top1_error"]), 100 * (1 - ev["top5_error"])
    return "\n".join([
        "# The shipped model", "", "| | |", "|---|---|",
        f"| preset | `{cfg.get('preset')}` (training/presets.py) |",
        f"| trained | {speed.get('device', '?')}, {last.get('seconds', 0) / 60:.1f} min, "
        f"{last.get('epoch', 0):.1f} epochs of batch {cfg.get('optim', {}).get('batch_size')} |",
        f"| val top-1 / top-5, local half (5,000 images, read once at the end) | "
        f"**{top1:.2f}% / {top5:.2f}%** (previous model: {100 * previous:.2f}%) |",
        f"| speed | {json.dumps(speed.get('rows', []))} |", "",
        "Files: `model.pt` (slim fp16 checkpoint), `model.onnx`, `model.int8.onnx`, "
        "`model.int8.xml/.bin`, `model.export.json`, `metrics.jsonl`, `curves.png`, "
        "`evaluation.json`; made by `python scripts/gpu/ship.py`.", "",
    ])  # fmt: skip


def ship(back: Path, data: Path, models: Path, log: Path, int8: bool, force: bool) -> float:
    ckpt = join(back)
    ev = evaluate(ckpt, data, back / "eval")
    top1, previous = 1 - ev["top1_error"], shipped_top1(models)
    print(f"val top-1 {100 * top1:.2f}% against the shipped {100 * previous:.2f}%")
    if top1 <= previous and not force:
        print("not shipped: it does not beat the shipped model on the local val half")
        raise SystemExit(1)
    stage = back / "stage"
    stage.mkdir(exist_ok=True)
    export(ckpt, data, stage, int8)
    run = back / "run"
    models.mkdir(parents=True, exist_ok=True)
    for f in stage.iterdir():
        shutil.copy2(f, models / f.name)
    shutil.copy2(ckpt, models / "model.pt")
    for f in ("metrics.jsonl", "curves.png"):
        if (run / f).exists():
            shutil.copy2(run / f, models / f)
    shutil.copy2(back / "eval" / "evaluation.json", models / "evaluation.json")
    (models / "README.md").write_text(card(ev, run, previous))
    with log.open("a") as f:
        f.write(f"\n| {datetime.date.today()} | `python scripts/gpu/ship.py {back}` | shipped: "
                f"val top-1 {100 * top1:.2f}% (was {100 * previous:.2f}%) |\n")  # fmt: skip
    return top1


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python scripts/gpu/ship.py", description=__doc__.split("\n")[0])
    p.add_argument("back", type=Path, help="the folder lease.sh collect's files were fetched to")
    p.add_argument("--data", type=Path, required=True, help="tiny-imagenet-200.zip")
    p.add_argument("--models", type=Path, default=ROOT / "models")
    p.add_argument("--log", type=Path, default=ROOT / "docs" / "LOG.md")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 forms (rehearsals)")
    p.add_argument("--force", action="store_true", help="ship even if it is not better")
    args = p.parse_args(argv)
    if not args.data.exists():
        return fail(f"no data at {args.data}")
    ship(args.back, args.data, args.models, args.log, not args.no_int8, args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())

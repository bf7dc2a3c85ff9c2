"""One 15-minute GPU lease as one plan: the device calls in order, what each carries, and their
expected seconds, with the total; and a rehearsal of the same calls on this machine.

    python scripts/gpu/lease.py plan                     # before a lease: print the calls
    python scripts/gpu/lease.py rehearse --zip Z --preset smoke --dir D   # the same, run here

The machine's side is scripts/gpu/lease.sh. A lease is 15 minutes of device time with the
machine's start, every transfer and every idle wait counted; the plan must come to at most 13,
which leaves two for a slow start. The schedule is driven by the clock: the trainer is told when
to finish (call 1's FINISH_IN), so it anneals to its end on time whatever the GPU's speed, and
the weights come back in the next call, before anything optional.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from common.cli import Parser, fail  # noqa: E402


def refuse(message: str):
    """The CLIs' convention (common/cli.py): one `error: ...` line, exit status 2."""
    raise SystemExit(fail(message))


# Seconds, from the leases so far (../GPU.md of the project's shared notes, docs/LOG.md): a
# machine starts in one to two minutes; a call of ~55 MiB took ~30 s in all.
MACHINE_START_S = 120
CALL_OVERHEAD_S = 5
MIB_PER_S = 2.2
DECODE_S = 15  # the zip decoded on the machine's 16 cores (7-10 s measured)
COLLECT_WORK_S = 15  # slim to fp16, split, hash, tar
RETURN_MIB = 48  # what collect brings back: 43 MB of weights, the run's small files
BUDGET_S = 13 * 60
CALL_LIMIT_MIB = 64


class Call(NamedTuple):  # not a dataclass: tests load this file by path, outside sys.modules
    name: str
    command: str
    carry: list[str]
    mib: float  # what travels: the tree and the carried paths
    seconds: float


def tree_mib(without_models: bool = False) -> float:
    """What every call carries: tracked files and untracked ones git does not ignore."""
    files = listed(without_models)
    return sum((ROOT / f).stat().st_size for f in files if (ROOT / f).is_file()) / 2**20


def listed(without_models: bool = False) -> list[str]:
    """Tracked files and untracked ones git does not ignore: what the device tool sends; for a
    rehearsal without models/, which a lease moves out first (scripts/gpu/models.sh)."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, check=True, text=True).stdout  # fmt: skip
    return [f for f in out.split("\0") if f and not (without_models and f.startswith("models/"))]


def mib(path: Path) -> float:
    if not path.exists():
        return 0.0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def zip_sha256(shared: Path) -> str:
    for line in (shared / "data" / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()[:2]
        if name == "tiny-imagenet-200.zip":
            return digest
    refuse("no tiny-imagenet-200.zip line in SHA256SUMS")


def plan(preset: str, train_minutes: float, tree: float, parts: list[float], whl: float,
         sha: str) -> list[Call]:  # fmt: skip
    """The calls of one lease. Call 1 tells the trainer to finish FINISH_IN seconds later: the
    rest of the data calls, the decode and `train_minutes` of training."""
    send = lambda m: CALL_OVERHEAD_S + (tree + m) / MIB_PER_S  # noqa: E731
    data_s = [send(p) for p in parts[1:]]
    finish_in = round(sum(data_s) + DECODE_S + train_minutes * 60 + 10)
    calls = [Call("start", f"bash scripts/gpu/lease.sh start {preset} {finish_in}",
                  [".whl", ".device-data/p0"], tree + whl + parts[0],
                  MACHINE_START_S + send(whl + parts[0]) + 10)]  # fmt: skip
    for k, (part, s) in enumerate(zip(parts[1:], data_s, strict=True), start=1):
        last = f" {sha}" if k == len(parts) - 1 else ""
        calls.append(Call(f"data {k}", f"bash scripts/gpu/lease.sh data {k}{last}",
                          [f".device-data/p{k}"], tree + part, s + (5 if last else 0)))  # fmt: skip
    train_s = DECODE_S + train_minutes * 60
    while train_s > 0:  # polls of at most 9 minutes (a call may run 10)
        poll = min(train_s, 540)
        calls.append(Call("poll", f"bash scripts/gpu/lease.sh poll {round(poll)} {preset}", [],
                          tree, send(0) + poll))  # fmt: skip
        train_s -= poll
    calls.append(Call("collect", f"bash scripts/gpu/lease.sh collect {preset}", [], tree,
                      send(0) + COLLECT_WORK_S + RETURN_MIB / MIB_PER_S))  # fmt: skip
    return calls


def print_plan(calls: list[Call]) -> float:
    total = sum(c.seconds for c in calls)
    print(f"{'#':>2} {'call':<8} {'MiB':>5} {'s':>5}  command  (carry)")
    for i, c in enumerate(calls, start=1):
        carry = f"  (carry {c.carry})" if c.carry else ""
        print(f"{i:>2} {c.name:<8} {c.mib:>5.1f} {c.seconds:>5.0f}  {c.command}{carry}")
    print(f"planned device time: {total / 60:.1f} min of {BUDGET_S / 60:.0f} (15 in the lease)")
    for c in calls:
        if c.mib > CALL_LIMIT_MIB:
            refuse(f"call {c.name} carries {c.mib:.1f} MiB > {CALL_LIMIT_MIB}")
    if total > BUDGET_S:
        refuse(f"the plan takes {total / 60:.1f} min > {BUDGET_S / 60:.0f}")
    return total


def part_sizes(parts_dir: Path, shared: Path, tree: float, whl: float) -> list[float]:
    """The data parts' MiB: as cut in .device-data/ (the project's data-parts tool), or as
    that tool would cut the compressed zip to fit beside the tree."""
    cut = sorted(parts_dir.glob("p*"), key=lambda p: int(p.name[1:]))
    if cut:
        return [mib(p) for p in cut]
    gz = sum(p.stat().st_size for p in (shared / "data").glob("*.gz.*")) / 2**20
    room = 61 - tree - whl
    if room < 8:
        raise SystemExit(
            f"error: the tree takes {tree:.1f} MiB of a call's 64: move models/ out first "
            "(bash scripts/gpu/models.sh out)"
        )
    n = int(-(-gz // room))
    return [gz / n] * n


# --- the rehearsal: the same calls, each in a fresh copy of the tree, against a local root -----


def copy_tree(dest: Path, carry: list[str], staged: Path) -> None:
    """What a call sees: tracked and non-ignored files, plus its carried paths (from `staged`
    for the data parts the rehearsal cut, else from the work tree)."""
    for f in listed(without_models=True):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    for c in carry:
        src = staged / c if (staged / c).exists() else ROOT / c
        if src.exists():
            shutil.copytree(src, dest / c)


def cut_parts(zip_path: Path, staged: Path, n: int = 3) -> tuple[str, list[float]]:
    """The zip gzip-compressed and cut in n parts under staged/.device-data/pK, as the shared
    tool cuts the real one; returns its SHA-256 and the parts' MiB."""
    import gzip

    data = gzip.compress(zip_path.read_bytes())
    size = -(-len(data) // n)
    sizes = []
    for k in range(n):
        d = staged / ".device-data" / f"p{k}"
        d.mkdir(parents=True)
        (d / f"tin.zip.gz.{k:02d}").write_bytes(data[k * size : (k + 1) * size])
        sizes.append(len(data[k * size : (k + 1) * size]) / 2**20)
    return hashlib.sha256(zip_path.read_bytes()).hexdigest(), sizes


def rehearse(zip_path: Path, preset: str, workdir: Path, train_minutes: float, gap: float) -> Path:
    """Run the plan's calls here, in order, `gap` seconds apart (standing in for the transfers,
    so that the trainer warms up before the data is there); returns the last call's $OUT."""
    staged, machine = workdir / "staged", workdir / "machine"
    staged.mkdir(parents=True)
    machine.mkdir()
    sha, parts = cut_parts(zip_path, staged)
    calls = plan(preset, train_minutes, tree_mib(True), parts, mib(ROOT / ".whl"), sha)
    print_plan(calls)
    env = {**os.environ, "LEASE_ROOT": str(machine), "PYTHON": sys.executable, "WAIT": "1"}
    for i, call in enumerate(calls, start=1):
        tree, out = workdir / f"call{i}" / "tree", workdir / f"call{i}" / "out"
        tree.mkdir(parents=True)
        out.mkdir()
        copy_tree(tree, call.carry, staged)
        time.sleep(gap if i > 1 else 0)
        t0 = time.perf_counter()
        r = subprocess.run(call.command.split(), cwd=tree, env={**env, "OUT": str(out)},
                           capture_output=True, text=True)  # fmt: skip
        print(f"call {i} ({call.name}): rc {r.returncode}, {time.perf_counter() - t0:.1f} s")
        if r.returncode:
            refuse(f"call {i} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python scripts/gpu/lease.py", description=__doc__.split("\n")[0])
    p.add_argument("step", choices=["plan", "rehearse"])
    p.add_argument("--preset", default="final")
    p.add_argument("--minutes", type=float, default=8.0, help="training minutes (default 8)")
    p.add_argument("--shared", type=Path, default=ROOT.parent / "shared",
                   help="the project's shared folder (data parts, SHA256SUMS)")  # fmt: skip
    p.add_argument("--zip", type=Path, help="rehearse: a small zip standing in for the data")
    p.add_argument("--dir", type=Path, help="rehearse: a new folder for the machine and calls")
    p.add_argument("--gap", type=float, default=10.0, help="rehearse: seconds between calls")
    args = p.parse_args(argv)
    if args.step == "plan":
        tree, whl = tree_mib(), mib(ROOT / ".whl")
        parts = part_sizes(ROOT / ".device-data", args.shared, tree, whl)
        print_plan(plan(args.preset, args.minutes, tree, parts, whl, zip_sha256(args.shared)))
        return 0
    if not args.zip or not args.zip.is_file():
        return fail("rehearse needs --zip, a small Tiny ImageNet zip (python -m training.fixtures)")
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="lease-"))
    out = rehearse(args.zip, args.preset, workdir, args.minutes, args.gap)
    print(f"brought back: {sorted(f.name for f in out.iterdir())} in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

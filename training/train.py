"""The training loop: `python -m training.train --preset NAME --data PATH --out runs/NAME`.

Airbench-style: the decoded training set lives on the device as uint8, batches are gathered and
augmented there, and nothing per image runs in Python. The learning rate is a pure function of
progress (training/schedule.py), so `--time-limit` and `--resume` need no scheduler state.
Checkpoints (`last.pt` every few minutes and each epoch, `best.pt` by val top-1) are atomic and hold
the RNG states, the epoch's order and the position in it: a resumed run continues exactly.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.cli import Parser, fail
from training import presets as P
from training.augment import Augment
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.config import ConfigError, parse_overrides, replace, to_dict
from training.data import DataError
from training.device import bf16_supported, resolve_device
from training.evaluate import predict, topk_errors
from training.models import build_model, depth_stats
from training.regularizers import ema_update, mix_batch, mixed_cross_entropy
from training.schedule import image_size_at, image_sizes, lr_at
from training.warmup import (
    images_per_second,
    matmul_peak,
    synthetic_batch,
    train_flops,
    warm_up,
)


def resolve_bf16(cfg: P.TrainConfig, device: torch.device) -> P.TrainConfig:
    """`cfg` with run.bf16 turned off, and one warning, where `device` lacks native bf16.

    Resolved once, before the config is saved, so config.json and the checkpoints record the
    precision that actually ran. Emulated bf16 costs ~15x: ResNet-34 (stem 'small') train steps
    at batch 64 ran 1.2 img/s under bf16 autocast vs 18.7-21.5 img/s fp32 on an AVX2-only AMD
    EPYC (4.9 img/s bf16 with the 'imagenet' stem); with AVX512-BF16, bf16 was 1.9x faster.
    """
    if not cfg.run.bf16 or bf16_supported(device):
        return cfg
    if device.type == "cpu":
        why = (
            "bf16 autocast on this CPU has no native support (no AVX512-BF16/AMX) "
            "and runs ~15x slower than fp32 here"
        )
    else:
        why = f"bf16 autocast on {device} has no native support (emulated, slower than fp32)"
    warnings.warn(f"{why}: training in fp32; pass --set run.bf16=false to silence", stacklevel=3)
    return replace(cfg, run={"bf16": False})


@dataclass
class State:
    """Everything a checkpoint restores; plain data, changed by the functions below."""

    model: torch.nn.Module
    opt: torch.optim.Optimizer
    ema: torch.nn.Module | None
    gen: torch.Generator  # data order and augmentation, on the data's device
    step: int = 0
    epoch: int = 0
    pos: int = 0  # batches of the current epoch already done
    perm: torch.Tensor | None = None  # this epoch's order
    elapsed: float = 0.0  # seconds of this run before the current process started
    best_top1: float = 0.0
    history: list = field(default_factory=list)  # metrics.jsonl rows so far
    meter: dict = field(default_factory=dict)  # this epoch's running sums


def param_groups(model: torch.nn.Module, weight_decay: float, skip_bn_bias: bool) -> list[dict]:
    """Weight decay on conv and linear weights; optionally none on BN and biases (1-D tensors)."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if skip_bn_bias and p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_state(cfg: P.TrainConfig, device: torch.device) -> State:
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model).to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    o = cfg.optim
    opt = torch.optim.SGD(
        param_groups(model, o.weight_decay, o.no_decay_bn_bias),
        lr=cfg.schedule.lr,
        momentum=o.momentum,
        nesterov=o.nesterov,
        # One fused kernel for the whole update on CUDA; foreach (a few kernels) elsewhere.
        fused=device.type == "cuda" or None,
    )
    ema = copy.deepcopy(model).eval() if o.ema > 0 else None
    gen = torch.Generator(device).manual_seed(cfg.run.seed)
    return State(model, opt, ema, gen)


def restore(state: State, ckpt: dict) -> None:
    """Load a `last.pt` back into `state`, RNG streams included."""
    unwrap(state.model).load_state_dict(ckpt["model"])  # DDP wraps it before the restore
    state.opt.load_state_dict(ckpt["optimizer"])
    if state.ema is not None:
        state.ema.load_state_dict(ckpt["ema"])
    t = ckpt["train"]
    state.step, state.epoch, state.pos = t["step"], t["epoch"], t["pos"]
    state.elapsed, state.best_top1, state.history = t["elapsed"], t["best_top1"], t["history"]
    state.meter = t["meter"]
    state.perm = t["perm"].to(state.gen.device) if t["perm"] is not None else None
    state.gen.set_state(t["rng"]["data"])
    torch.set_rng_state(t["rng"]["torch"])
    if t["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(t["rng"]["cuda"])


def payload(state: State, cfg: P.TrainConfig, ds, preset: str | None) -> dict:
    """A self-describing checkpoint: config, classes, preprocessing, weights and training state."""
    return {
        "preset": preset,
        "config": to_dict(cfg),
        "classes": {
            "wnids": list(ds.wnids),
            "names": list(ds.names),
            "full_names": list(ds.full_names),
        },
        "preprocessing": {
            "mean": list(ds.mean),
            "std": list(ds.std),
            "size": 64,
            "layout": "NHWC uint8 RGB",
        },
        "model": unwrap(state.model).state_dict(),
        "ema": unwrap(state.ema).state_dict() if state.ema is not None else None,
        "optimizer": state.opt.state_dict(),
        "train": {
            "step": state.step,
            "epoch": state.epoch,
            "pos": state.pos,
            "perm": state.perm.cpu() if state.perm is not None else None,
            "elapsed": state.elapsed,
            "best_top1": state.best_top1,
            "history": state.history,
            "meter": state.meter,
            "rng": {
                "data": state.gen.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            },
        },
    }


def unwrap(model):
    return getattr(model, "module", model)  # DDP


# --- the loop ----------------------------------------------------------------------------------


def holdout_split(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded random slice of `holdout` images out of n."""
    if not 0 <= holdout < n:
        raise ConfigError(f"data.holdout must be in [0, {n}) for {n} training images")
    perm = np.random.default_rng([seed, n]).permutation(n)
    return np.sort(perm[holdout:]), np.sort(perm[:holdout])


def load_data(cfg: P.TrainConfig, path, device: torch.device):
    """The dataset, its training images and labels on `device` (uint8, 1.2 GB for all), and the
    split evaluated each epoch: the held-out slice of train (data.holdout), else val."""
    from training.data import Split, load

    ds = load(path, classes=cfg.data.classes, per_class=cfg.data.per_class)
    xs, ys, monitor = ds.train.x, ds.train.y, ds.val
    if cfg.data.holdout:
        keep, held = holdout_split(len(ys), cfg.data.holdout, cfg.run.seed)
        files = tuple(ds.train.files[i] for i in held)
        monitor = Split(np.ascontiguousarray(xs[held]), np.asarray(ys[held]), files)
        xs, ys = xs[keep], ys[keep]
    with warnings.catch_warnings():  # the read-only memmap is shared, never written: no copy
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.from_numpy(xs).to(device)
    y = torch.from_numpy(np.ascontiguousarray(ys)).to(device)
    if len(y) < cfg.optim.batch_size:
        raise ValueError(f"batch size {cfg.optim.batch_size} exceeds the {len(y)} training images")
    return ds, x, y, monitor


def next_batch(state: State, x, y, batch_size: int, rank: int = 0, world: int = 1):
    """The next batch of this epoch's order (a new order at each epoch); this rank's share."""
    if state.perm is None or state.pos >= len(y) // batch_size:
        state.perm = torch.randperm(len(y), device=state.gen.device, generator=state.gen)
        state.pos = 0
    idx = state.perm[state.pos * batch_size : (state.pos + 1) * batch_size][rank::world]
    state.pos += 1
    return x[idx], y[idx]


def augment_generator(state: State, cfg: P.TrainConfig, rank: int, world: int):
    """The stream this step's augmentation draws from.

    One process: the run's own `state.gen`. Under DDP every rank holds the same `state.gen` (it
    must: it draws the shared epoch order), so augmenting from it would give each rank's i-th
    image the same flip, ops and intensities as every other rank's i-th image. Each rank draws
    from its own stream instead, seeded by (seed, step, rank): a resumed run recomputes it, so
    it needs no place in the checkpoint.
    """
    if world == 1:
        return state.gen
    seed = np.random.SeedSequence([cfg.run.seed, state.step, rank]).generate_state(1)[0]
    return torch.Generator(state.gen.device).manual_seed(int(seed))


def make_forward_loss(model: torch.nn.Module, cfg: P.TrainConfig, world: int = 1):
    """(x, y_a, y_b, lam) → (loss, logits): the model and its loss, as ONE graph under
    run.compile (forward, and through AOTAutograd the backward): static shapes (the last partial
    batch is dropped; each image side of the schedule compiles once), `lam` a 0-d tensor so that
    no value recompiles, stochastic depth per sample (drop_mode 'sample') so that no drop
    pattern does. fullgraph=True makes any graph break an error instead of a silent slowdown;
    under DDP, whose optimizer splits the graph at its buckets, it is left off."""
    o = cfg.optim

    def forward_loss(x, y_a, y_b, lam):
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.run.bf16):
            logits = model(x)
        return mixed_cross_entropy(logits.float(), y_a, y_b, lam, o.label_smoothing), logits

    if not cfg.run.compile:
        return forward_loss
    if cfg.model.survival_last < 1 and cfg.model.drop_mode != "sample":
        raise ConfigError(
            "run.compile needs model.drop_mode 'sample' with stochastic depth: dropping whole "
            "blocks decides in Python, which breaks the graph (valid drop modes: batch, sample)"
        )
    mode = None if cfg.run.compile_mode == "default" else cfg.run.compile_mode
    return torch.compile(forward_loss, fullgraph=world == 1, dynamic=False, mode=mode)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Progressive resizing: the augmented batch at `size` px (antialiased, as a photo shrinks)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def train_step(
    state: State, fwd, augment, xb, yb, cfg: P.TrainConfig, lr: float, gen=None, size=None
):
    """One SGD step; returns the loss and logits, still on the device (no host sync: the draws
    are on the device or plain Python numbers, nothing is read back)."""
    for group in state.opt.param_groups:
        group["lr"] = lr
    xa = augment(xb, state.gen if gen is None else gen)
    if size is not None:
        xa = resize(xa, size)
    o = cfg.optim
    rng = np.random.default_rng([cfg.run.seed, state.step])  # a pure function of the step
    xa, y_a, y_b, lam = mix_batch(
        xa, yb, mixup_alpha=o.mixup, cutmix_alpha=o.cutmix, prob=o.mix_prob, rng=rng
    )
    if y_b is y_a:  # an unmixed step: the compiled graph guards on its inputs not aliasing
        y_b = y_a.clone()
    # torch.full writes the value in a kernel: no host-to-device copy (which would sync).
    loss, logits = fwd(xa, y_a, y_b, torch.full((), lam, device=xa.device))
    state.opt.zero_grad(set_to_none=True)
    loss.backward()
    state.opt.step()
    if state.ema is not None:
        ema_update(state.ema, unwrap(state.model), o.ema)
    return loss.detach(), logits.detach()


def accumulate(meter: dict, loss, logits, y) -> None:
    """Add a step's loss and top-1/top-5 hits to the epoch's sums, as device tensors."""
    top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices == y[:, None]
    for key, value in (
        ("loss", loss * len(y)),
        ("top1", top5[:, 0].sum()),
        ("top5", top5.any(1).sum()),
    ):
        meter[key] = meter.get(key, 0) + value.float()
    meter["n"] = meter.get("n", 0) + len(y)  # a host number: a device tensor would be a copy


def evaluate_split(model, split, ds, device, cfg: P.TrainConfig) -> dict:
    logits = predict(
        model,
        split.x,
        ds.mean,
        ds.std,
        device=device,
        bf16=cfg.run.bf16,
        batch_size=cfg.run.eval_batch_size,
    )
    y = torch.from_numpy(np.asarray(split.y))
    return {**topk_errors(logits, y), "loss": F.cross_entropy(logits, y).item()}


def monitor_name(cfg: P.TrainConfig) -> str:
    """What each epoch's row is evaluated on: 'heldout' (a slice of train) or 'val'."""
    return "heldout" if cfg.data.holdout else "val"


def evaluate_val_once(state: State, cfg: P.TrainConfig, ds, device, out: Path) -> dict:
    """A held-out run's one look at val, at its end (its last weights: nothing picked by val),
    added to its last metrics row and kept in val.json."""
    val = evaluate_split(unwrap(state.ema or state.model), ds.val, ds, device, cfg)
    row = state.history[-1]
    row.update({f"val_{k}": v for k, v in val.items()})
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state.history))
    (out / "val.json").write_text(json.dumps({"step": state.step, **val}, indent=1) + "\n")
    return row


class DivergedError(RuntimeError):
    pass


def ensure_finite(state: State, cfg: P.TrainConfig) -> None:
    """Refuse to checkpoint a diverged model: `last.pt` keeps the last finite state.

    The loss trails the weights by one update, so the weights are checked too (one fused norm:
    an overflowing norm means weights of 1e19 and more, diverged all the same).
    """
    loss = float(state.meter.get("loss", 0.0))
    norm = torch.stack(torch._foreach_norm(list(state.model.parameters()))).norm().item()
    if not (math.isfinite(loss) and math.isfinite(norm)):
        raise DivergedError(
            f"the training loss became {loss} (weight norm {norm}) by step {state.step}: "
            "the run diverged. "
            f"last.pt holds the last finite state; lower schedule.lr (now {cfg.schedule.lr}) "
            "with --set schedule.lr=... and start a new run"
        )


def end_epoch(
    state: State, cfg: P.TrainConfig, data, device, out: Path, preset, lr: float, per_epoch: int
) -> dict:
    """Evaluate the monitored split, log a metrics row, redraw the curves and checkpoint `last`
    (and `best`, by that split: never by val when a slice of train is held out)."""
    ds, monitor = data
    ensure_finite(state, cfg)
    m = {k: float(v) for k, v in state.meter.items()}
    n = max(m.get("n", 0.0), 1.0)
    val = evaluate_split(unwrap(state.ema or state.model), monitor, ds, device, cfg)
    name = monitor_name(cfg)
    row = {
        "epoch": round(state.step / per_epoch, 3),
        "step": state.step,
        "lr": lr,
        "train_loss": m.get("loss", 0.0) / n,
        "train_top1_error": 1 - m.get("top1", 0.0) / n,
        "train_top5_error": 1 - m.get("top5", 0.0) / n,
        f"{name}_loss": val["loss"],
        f"{name}_top1_error": val["top1_error"],
        f"{name}_top5_error": val["top5_error"],
        "img_per_s": n / max(m.get("seconds", 0.0), 1e-9),
        "seconds": round(state.elapsed, 1),
        **depth_stats(unwrap(state.model)),
    }
    state.history.append(row)
    state.meter = {}
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in state.history))
    plot_curves(state.history, out / "curves.png")
    top1 = 1 - val["top1_error"]
    if top1 > state.best_top1:
        state.best_top1 = top1
        save_checkpoint(out / "best.pt", payload(state, cfg, ds, preset))
    save_checkpoint(out / "last.pt", payload(state, cfg, ds, preset))
    return row


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and top-1 error, train against val, per epoch (Sun's Figures 5, 8 and 13)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    monitored = "heldout" if "heldout_loss" in history[0] else "val"
    for split in ("train", monitored):
        ax1.plot(epochs, [r[f"{split}_loss"] for r in history], label=split)
        ax2.plot(epochs, [r[f"{split}_top1_error"] for r in history], label=f"{split} top-1")
        ax2.plot(epochs, [r[f"{split}_top5_error"] for r in history], "--", label=f"{split} top-5")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax2.set(xlabel="epoch", ylabel="error", title="error", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def setup_distributed() -> tuple[int, int, torch.device | None]:
    """(rank, world size, device) under torchrun; (0, 1, None) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, None
    cuda = torch.cuda.is_available()
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    return torch.distributed.get_rank(), world, torch.device(f"cuda:{local}" if cuda else "cpu")


def prepare_forward(state: State, cfg: P.TrainConfig, device: torch.device, world: int):
    """Wrap for DDP, then the model and loss as one step function (compiled under run.compile)."""
    if world > 1:
        # Blocks dropped for the whole batch get no gradient in that step: DDP must be told.
        state.model = torch.nn.parallel.DistributedDataParallel(
            state.model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.model.survival_last < 1 and cfg.model.drop_mode == "batch",
        )
    return make_forward_loss(state.model, cfg, world)


def agree(values: list, group) -> list:
    """The per-step decisions every rank must share, as the max over ranks (one tiny all-reduce
    on a CPU gloo group: no GPU sync). Progress from the clock, a stop signal seen by any rank,
    rank 0's "checkpoint now": taken per rank, they would give the ranks different learning
    rates or a different number of steps, and the rank that stops first leaves the others
    blocked in DDP's all-reduce."""
    if group is None:
        return values
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=group)
    return t.tolist()


METER_SUMS = ("loss", "top1", "top5", "n")


def reduce_meter(meter: dict, rank: int, world: int, device) -> None:
    """Collective: add every rank's running sums into rank 0's meter; the others restart at zero.

    Each rank sees 1/world of the global batch, so rank 0's own sums alone log the train loss and
    accuracy of half the data and img_per_s at 1/world of the real rate. Called on every rank
    before rank 0 logs or checkpoints the meter; "seconds" stays rank 0's own (the ranks step
    in lockstep).
    """
    if world == 1:
        return
    t = torch.stack(
        [torch.as_tensor(meter.get(k, 0.0), dtype=torch.float32, device=device) for k in METER_SUMS]
    )
    torch.distributed.all_reduce(t)
    if rank != 0:
        meter.clear()
    elif meter:  # an empty meter (just after an epoch's end) stays empty
        meter.update(zip(METER_SUMS, t.unbind(), strict=True))


class ReplicaMismatchError(RuntimeError):
    pass


def check_replicas(state: State, out: Path, rank: int, world: int, group) -> None:
    """Collective: compare a digest of each rank's weights (and EMA) and record them in
    out/replicas.json (rank 0). DDP keeps the replicas equal only while every rank applies the
    same update; if they drift, rank 0 checkpoints one of `world` different models and nothing
    else would say so. Batch-norm buffers are left out: DDP broadcasts rank 0's at every forward,
    and the forward then updates each rank's copy with its own share of the batch."""
    h = hashlib.sha256()
    tensors = list(unwrap(state.model).parameters())
    if state.ema is not None:
        tensors += list(unwrap(state.ema).parameters())
    for t in tensors:
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    digests = [None] * world
    torch.distributed.all_gather_object(digests, h.hexdigest(), group=group)
    if rank == 0:
        record = {"step": state.step, "world": world, "sha256": digests}
        (out / "replicas.json").write_text(json.dumps(record, indent=1) + "\n")
    if len(set(digests)) > 1:
        raise ReplicaMismatchError(f"the {world} ranks' weights differ at step {state.step}")


@contextlib.contextmanager
def local_rank_first(world: int):
    """Each node's first process decodes the dataset into the cache while the others wait, then
    they map it: not `world` concurrent decodes of the same zip."""
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if world > 1 and not first:
        torch.distributed.barrier()
    yield
    if world > 1 and first:
        torch.distributed.barrier()


class RunExistsError(FileExistsError):
    pass


def synthetic_step(state: State, fwd, cfg: P.TrainConfig, device) -> Callable[[int], int]:
    """step_at(size): one training step on random images at `size` px (for warmup.warm_up)."""
    xb = synthetic_batch(cfg.optim.batch_size, device)
    yb = torch.arange(cfg.optim.batch_size, device=device) % cfg.model.num_classes
    augment = Augment(cfg.augment, (120.0, 115.0, 100.0), (60.0, 60.0, 60.0))
    gen = torch.Generator(device).manual_seed(cfg.run.seed + 1)  # not the run's stream

    def step_at(size: int) -> int:
        train_step(state, fwd, augment, xb, yb, cfg, cfg.schedule.lr, gen, size)
        return len(yb)

    return step_at


SPEED_FLIPS = {  # the GPU speed table's training rows: one setting flipped at a time, eager
    "eager": {"run": {"compile": False}},
    "eager, fp32": {"run": {"compile": False, "bf16": False}},
    "eager, NCHW": {"run": {"compile": False, "channels_last": False}},
    "eager, no stochastic depth": {"run": {"compile": False}, "model": {"survival_last": 1.0}},
}


def speed_rows(cfg: P.TrainConfig, device, stop: Callable[[], bool], steps: int = 10) -> list:
    """img/s of `cfg` with each of SPEED_FLIPS, on fresh models, until `stop()` says the data has
    come (the rows are optional: training never waits for them)."""
    rows = []
    for name, flip in SPEED_FLIPS.items():
        if stop():
            break
        c = replace(cfg, **flip)
        state = build_state(c, device)
        step_at = synthetic_step(state, make_forward_loss(state.model, c), c, device)
        rate = images_per_second(lambda f=step_at: f(64), c.optim.batch_size, device, 2, steps)
        rows.append({"setting": name, "img_per_s": round(rate, 1)})
    return rows


def wait_for_data(path, minutes: float, warm: Callable[[Callable[[], bool]], None]) -> None:
    """Until the file at `path` exists (the lease's last data call moves it there whole): run
    `warm(arrived)` first, then poll; a DataError after `minutes`."""
    path = Path(path)
    if path.exists():
        return
    deadline = time.monotonic() + minutes * 60
    warm(path.exists)
    while not path.exists():
        if time.monotonic() > deadline:
            raise DataError(f"no data at {path} after waiting {minutes:g} min (--wait-for-data)")
        time.sleep(1)


def warm_and_measure(state, fwd, cfg, device, out: Path, arrived) -> None:
    """Compile every image side on synthetic batches, then time the speed table's rows; both go
    to out/speed.json with the measured bf16 matmul peak and each row's share of it."""
    sizes = image_sizes(cfg.schedule, 64)
    warm = warm_up(state, synthetic_step(state, fwd, cfg, device), sizes, device)
    peak = matmul_peak(device)
    flops = {size: train_flops(unwrap(state.model), size) for size in sizes}
    table = [{"setting": "as configured", "img_per_s": warm["img_per_s"][64]}]
    table += speed_rows(cfg, device, arrived)
    for row in table:
        row["share_of_bf16_peak"] = round(row["img_per_s"] * flops[64] / peak, 4)
    record = {"device": str(device), "bf16_matmul_tflops": round(peak / 1e12, 1), **warm}
    record["rows"] = table
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record), flush=True)


def time_budget(cfg: P.TrainConfig, elapsed: float, finish_by: float | None) -> float | None:
    """Seconds the whole run may take: run.time_limit, cut so that it ends by the wall-clock
    time `finish_by` (a lease's plan) whatever the warm-up and data took."""
    limit = cfg.run.time_limit * 60 if cfg.run.time_limit else None
    if finish_by is None:
        return limit
    left = elapsed + max(finish_by - time.time(), 1.0)
    return min(limit, left) if limit else left


def train(
    cfg: P.TrainConfig,
    data,
    out,
    *,
    preset: str | None = None,
    resume: bool = False,
    device: str | None = None,
    progress: bool | None = None,
    wait_minutes: float = 0.0,
    finish_by: float | None = None,
) -> dict:
    """Train `cfg` on the dataset at `data` into `out`; return the last metrics row.

    wait_minutes: if `data` is not there yet, compile and measure on synthetic batches while it
    comes (warm_and_measure), then wait for it this long at most. finish_by: a wall-clock time
    (time.time()) by which the schedule ends (time_budget)."""
    rank, world, dist_device = setup_distributed()
    device = resolve_device(dist_device or device)
    if cfg.optim.batch_size % world:
        raise ConfigError(
            f"optim.batch_size {cfg.optim.batch_size} is the global batch: it must divide "
            f"evenly among the {world} processes"
        )
    group = torch.distributed.new_group(backend="gloo") if world > 1 else None  # see agree()
    cfg = resolve_bf16(cfg, device)  # before config.json and checkpoints: they say what ran
    out = Path(out)
    last = out / "last.pt"
    if last.exists() and not resume:
        raise RunExistsError(f"{out} already holds a run: pass --resume, or choose a new --out")
    if cfg.data.classes:  # the head's size before the data is read (a warm-up needs the model)
        cfg = replace(cfg, model={"num_classes": cfg.data.classes})
    state = build_state(cfg, device)
    fwd = prepare_forward(state, cfg, device, world)
    if wait_minutes:

        def warm(arrived):
            warm_and_measure(state, fwd, cfg, device, out, arrived)

        wait_for_data(data, wait_minutes, warm)
    with local_rank_first(world):
        ds, x, y, monitor = load_data(cfg, data, device)
    if cfg.model.num_classes != len(ds.wnids):  # a class subset gets a head of its own size
        cfg = replace(cfg, model={"num_classes": len(ds.wnids)})
        state = build_state(cfg, device)
        fwd = prepare_forward(state, cfg, device, world)
    if resume and last.exists():
        restore(state, load_checkpoint(last, map_location=device))
        if rank != 0:
            state.meter = {}  # the checkpoint's sums are rank 0's, already reduced (reduce_meter)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({"preset": preset, **to_dict(cfg)}, indent=1))
    augment = Augment(cfg.augment, ds.mean, ds.std)
    bs, per_epoch = cfg.optim.batch_size, len(y) // cfg.optim.batch_size
    total = max(1, round(cfg.run.epochs * per_epoch))
    limit = time_budget(cfg, state.elapsed, finish_by)
    t0, saved = time.perf_counter() - state.elapsed, time.perf_counter()
    bar = tqdm(
        total=total, initial=state.step, unit="step", disable=(rank != 0) or progress is False
    )
    lr, window = cfg.schedule.lr, time.perf_counter()
    start, stopping = state.step, False
    with StopOnSignal() as stop:
        while True:
            state.elapsed = time.perf_counter() - t0
            done = max(state.step / total, state.elapsed / limit if limit else 0.0)
            due = (  # a periodic checkpoint of the last step (the epoch's end saves its own)
                rank == 0
                and state.step > start
                and state.pos != per_epoch
                and time.perf_counter() - saved > cfg.run.checkpoint_minutes * 60
            )
            done, stopping, due = agree([done, stop.requested, due], group)
            if due:
                reduce_meter(state.meter, rank, world, device)
                if rank == 0:
                    ensure_finite(state, cfg)
                    save_checkpoint(last, payload(state, cfg, ds, preset))
                    saved = time.perf_counter()
            if stopping or done >= 1:
                break
            lr = lr_at(cfg.schedule, done)
            size = image_size_at(cfg.schedule, done, x.shape[1])
            tick = time.perf_counter()
            xb, yb = next_batch(state, x, y, bs, rank, world)
            gen = augment_generator(state, cfg, rank, world)
            loss, logits = train_step(state, fwd, augment, xb, yb, cfg, lr, gen, size)
            accumulate(state.meter, loss, logits, yb)
            state.meter["seconds"] = state.meter.get("seconds", 0.0) + time.perf_counter() - tick
            state.step += 1
            bar.update()
            if state.step % 25 == 0:  # .item() waits for the GPU: only every 25 steps
                img_s = bs * 25 / (time.perf_counter() - window)
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.4f}", img_s=f"{img_s:.0f}")
                window = time.perf_counter()
            if state.pos == per_epoch:
                reduce_meter(state.meter, rank, world, device)
                if rank == 0:  # the others wait for it in the next agree()
                    row = end_epoch(state, cfg, (ds, monitor), device, out, preset, lr, per_epoch)
                    bar.write(json.dumps({k: _round(v) for k, v in row.items()}))
                    saved = time.perf_counter()
    bar.close()
    reduce_meter(state.meter, rank, world, device)  # the sums since the last reduction
    result = {}
    if rank == 0 and stopping:  # SIGTERM / Ctrl-C: keep everything, evaluate nothing
        ensure_finite(state, cfg)
        save_checkpoint(last, payload(state, cfg, ds, preset))
        result = {"interrupted": True, "step": state.step}
    elif rank == 0:
        if state.meter or not state.history:  # the run ended inside an epoch: evaluate it too
            end_epoch(state, cfg, (ds, monitor), device, out, preset, lr, per_epoch)
        result = state.history[-1]
        if cfg.data.holdout:
            result = evaluate_val_once(state, cfg, ds, device, out)
    if group is not None:
        check_replicas(state, out, rank, world, group)
    return result


def _round(v):
    return round(v, 4) if isinstance(v, float) else v


class StopOnSignal:
    """SIGTERM and Ctrl-C ask the loop to stop at the next step and checkpoint, not to die."""

    def __enter__(self):
        self.requested = False
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


# --- CLI ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m training.train", description=__doc__.split("\n")[0])
    p.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    p.add_argument("--preset", help="a name from --list-presets")
    p.add_argument("--data", help="tiny-imagenet-200.zip or folder")
    p.add_argument("--out", help="run folder (default: runs/PRESET)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--time-limit", type=float, help="minutes: anneal to the end of this budget")
    p.add_argument("--epochs", type=float, help="override the preset's run length")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--wait-for-data",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="if --data is not there yet: compile and measure on synthetic batches "
        "(speed.json), then wait this long for it",
    )
    p.add_argument(
        "--finish-by",
        type=float,
        metavar="UNIX_TIME",
        help="end the schedule by this wall-clock time (a GPU lease's plan)",
    )
    args = p.parse_args(argv)
    if args.list_presets:
        print(P.describe())
        return 0
    if not args.preset or not args.data:
        p.error("--preset and --data are required (see --list-presets)")
    try:
        overrides = parse_overrides(args.set)
        run = overrides.setdefault("run", {})
        if args.time_limit is not None:
            run["time_limit"] = args.time_limit
        if args.epochs is not None:
            run["epochs"] = args.epochs
        cfg = P.get(args.preset, **overrides)
        out = args.out or f"runs/{args.preset}"
        row = train(
            cfg,
            args.data,
            out,
            preset=args.preset,
            resume=args.resume,
            device=args.device,
            wait_minutes=args.wait_for_data,
            finish_by=args.finish_by,
        )
    except (ConfigError, DataError, CheckpointError, RunExistsError, DivergedError) as e:
        return fail(e)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if row:  # under torchrun only rank 0 has a row to print
        print(json.dumps({k: _round(v) for k, v in row.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

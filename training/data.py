"""Tiny ImageNet from the official zip or folder, decoded once into uint8 arrays and cached.

`load(path)` returns a `TinyImageNet`: train and val splits as N×64×64×3 uint8 arrays with int64
labels, classes in `wnids.txt` order, names from `words.txt`, and the training set's per-channel
mean and std (the preprocessing constants every later stage takes from the checkpoint).

The first load decodes every JPEG in parallel on all cores straight into memory-mapped `.npy`
files in a cache directory keyed by the source's content; later loads map those files in
seconds. Val labels come from `val/val_annotations.txt`, never from folder structure: reading
val as an image folder gives every image one label and chance accuracy.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
import zipfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.cli import Parser, fail

IMAGE_SIZE = 64
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SPLITS = ("train", "val")
# Bump when the cached arrays' layout or meaning changes, so stale caches are never read.
CACHE_VERSION = 1
CHUNK = 512  # images per worker task: large enough to amortise IPC, small enough for a live bar
# Below this many images a process pool costs more to start than it saves.
MIN_IMAGES_FOR_POOL = 2048


class DataError(ValueError):
    """The input is not a well-formed Tiny ImageNet; the message names the file at fault."""


@dataclass(frozen=True)
class Split:
    x: np.ndarray  # (N, 64, 64, 3) uint8, RGB
    y: np.ndarray  # (N,) int64 index into wnids
    files: tuple[str, ...]  # member paths relative to the dataset root, e.g. val/images/val_0.JPEG

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class TinyImageNet:
    train: Split
    val: Split
    wnids: tuple[str, ...]
    names: tuple[str, ...]  # short name: the first synonym in words.txt ("Egyptian cat")
    full_names: tuple[str, ...]  # the whole words.txt entry
    mean: tuple[float, float, float]  # per RGB channel over the training set, 0..255 units
    std: tuple[float, float, float]
    source: str
    cache_dir: Path | None
    info: dict = field(default_factory=dict)  # grayscale counts, timings, subset

    @property
    def num_classes(self) -> int:
        return len(self.wnids)

    def describe(self) -> dict:
        return {
            "source": self.source,
            "classes": self.num_classes,
            "splits": {
                s: {"images": len(getattr(self, s)), "per_class": _per_class(getattr(self, s))}
                for s in SPLITS
            },
            "mean": [round(v, 3) for v in self.mean],
            "std": [round(v, 3) for v in self.std],
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            **self.info,
        }


def _per_class(split: Split) -> dict:
    if not len(split.y):
        return {"min": 0, "max": 0}
    counts = np.bincount(split.y)
    return {"min": int(counts.min()), "max": int(counts.max())}


# --- reading the archive or folder -------------------------------------------------------------


class Source:
    """A Tiny ImageNet root inside a zip or a folder: list members and read their bytes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise DataError(f"{self.path}: no such file or folder")
        self._zip = None
        if self.path.is_file():
            if not zipfile.is_zipfile(self.path):
                raise DataError(f"{self.path}: not a zip file nor a folder")
            self._zip = zipfile.ZipFile(self.path)
            self._names = [n for n in self._zip.namelist() if not n.endswith("/")]
            roots = sorted((n for n in self._names if n.rsplit("/", 1)[-1] == "wnids.txt"), key=len)
            if not roots:
                raise DataError(f"{self.path}: not Tiny ImageNet: no wnids.txt in the zip")
            self.prefix = roots[0][: -len("wnids.txt")]
        else:
            root = next(
                (
                    p
                    for p in (self.path, self.path / "tiny-imagenet-200")
                    if (p / "wnids.txt").is_file()
                ),
                None,
            )
            if root is None:
                raise DataError(
                    f"{self.path}: not Tiny ImageNet: no wnids.txt here nor in tiny-imagenet-200/"
                )
            self.root = root
            self._names = None

    def files(self, folder: str) -> list[str]:
        """Every file under `folder` (relative to the root), as root-relative POSIX paths."""
        if self._zip is not None:
            start = self.prefix + folder.rstrip("/") + "/"
            return [n[len(self.prefix) :] for n in self._names if n.startswith(start)]
        base = self.root / folder
        out = []
        for dirpath, _, filenames in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            out.extend(f"{rel}/{f}" for f in filenames)
        return out

    def exists(self, member: str) -> bool:
        if self._zip is not None:
            try:
                self._zip.getinfo(self.prefix + member)
                return True
            except KeyError:
                return False
        return (self.root / member).is_file()

    def read(self, member: str) -> bytes:
        if not self.exists(member):
            raise DataError(f"{self.path}: missing {member}")
        if self._zip is not None:
            return self._zip.read(self.prefix + member)
        return (self.root / member).read_bytes()

    def read_text(self, member: str) -> str:
        return self.read(member).decode("utf-8")

    def identity(self) -> str:
        """A content key: CRCs and sizes for a zip, sizes and mtimes for a folder."""
        h = hashlib.sha256()
        if self._zip is not None:
            for info in sorted(self._zip.infolist(), key=lambda i: i.filename):
                h.update(
                    f"{info.filename[len(self.prefix) :]}\0{info.CRC}\0{info.file_size}\n".encode()
                )
        else:
            for member in sorted(self.files("")):
                st = (self.root / member).stat()
                h.update(f"{member}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


# --- the index: which file is which class ------------------------------------------------------


@dataclass(frozen=True)
class Index:
    wnids: tuple[str, ...]
    names: tuple[str, ...]
    full_names: tuple[str, ...]
    members: dict[str, list[str]]  # split -> files in decode order
    labels: dict[str, list[int]]


def read_wnids(src: Source) -> tuple[str, ...]:
    wnids = tuple(line.strip() for line in src.read_text("wnids.txt").splitlines() if line.strip())
    if not wnids:
        raise DataError(f"{src.path}: wnids.txt is empty")
    dupes = sorted({w for w in wnids if wnids.count(w) > 1})
    if dupes:
        raise DataError(f"{src.path}: wnids.txt lists {dupes[:3]} more than once")
    return wnids


def read_names(src: Source, wnids: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(short, full) names from words.txt; short is the first synonym ('Egyptian cat')."""
    wanted = set(wnids)
    full = {}
    for line in src.read_text("words.txt").splitlines():
        wnid, _, words = line.partition("\t")
        if wnid in wanted:
            full[wnid] = words.strip()
    missing = [w for w in wnids if not full.get(w)]
    if missing:
        raise DataError(f"{src.path}: words.txt has no name for {missing[:3]} (of {len(missing)})")
    full_names = tuple(full[w] for w in wnids)
    return tuple(n.split(",")[0].strip() for n in full_names), full_names


def _natural_key(member: str):
    # n01443537_12.JPEG after n01443537_2.JPEG: the images' own numbering, not string order.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", member)]


def _is_image(member: str) -> bool:
    return member.lower().endswith(IMAGE_SUFFIXES)


def index_train(src: Source, wnids, per_class: int | None) -> tuple[list[str], list[int]]:
    by_class: dict[str, list[str]] = {}
    for member in src.files("train"):
        parts = member.split("/")  # train/<wnid>/images/<file> (and train/<wnid>/<wnid>_boxes.txt)
        if not _is_image(member):
            continue
        if len(parts) != 4 or parts[2] != "images":
            raise DataError(f"{src.path}: {member}: expected train/<wnid>/images/<file>")
        by_class.setdefault(parts[1], []).append(member)
    unknown = sorted(set(by_class) - set(wnids))
    if unknown:
        raise DataError(f"{src.path}: train/{unknown[0]}: class not in wnids.txt")
    members, labels = [], []
    for label, wnid in enumerate(wnids):
        files = sorted(by_class.get(wnid, []), key=_natural_key)
        if not files:
            raise DataError(f"{src.path}: train/{wnid}/images: no images for a class in wnids.txt")
        files = files[:per_class]
        members += files
        labels += [label] * len(files)
    return members, labels


def index_val(src: Source, wnids, per_class: int | None) -> tuple[list[str], list[int]]:
    ann = "val/val_annotations.txt"
    if not src.exists(ann):
        raise DataError(f"{src.path}: missing {ann} (val labels come from it, not from folders)")
    label_of = {w: i for i, w in enumerate(wnids)}
    members, labels, seen, taken = [], [], set(), {}
    for n, line in enumerate(src.read_text(ann).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise DataError(
                f"{src.path}: {ann} line {n}: expected '<file>\\t<wnid>...', got {line!r}"
            )
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in label_of:
            raise DataError(f"{src.path}: {ann} line {n}: wnid {wnid} not in wnids.txt")
        if name in seen:
            raise DataError(f"{src.path}: {ann} line {n}: {name} annotated twice")
        seen.add(name)
        label = label_of[wnid]
        if per_class is not None and taken.get(label, 0) >= per_class:
            continue
        taken[label] = taken.get(label, 0) + 1
        members.append(f"val/images/{name}")
        labels.append(label)
    on_disk = {m for m in src.files("val/images") if _is_image(m)}
    missing = [m for m in members if m not in on_disk]
    if missing:
        raise DataError(f"{src.path}: {missing[0]} is in {ann} but not in the dataset")
    stray = sorted(on_disk - {f"val/images/{s}" for s in seen}, key=_natural_key)
    if stray:
        raise DataError(f"{src.path}: {stray[0]} has no line in {ann}")
    return members, labels


def build_index(src: Source, classes: int | None = None, per_class: int | None = None) -> Index:
    wnids = read_wnids(src)
    for name, value in (("classes", classes), ("per_class", per_class)):
        if value is not None and value < 1:
            raise DataError(f"subset {name} must be a positive integer, got {value}")
    if classes is not None:
        if classes > len(wnids):
            raise DataError(f"subset asks for {classes} classes; wnids.txt lists {len(wnids)}")
        # A subset keeps the first K classes, but images of the others must still be ignored.
        all_wnids, wnids = wnids, wnids[:classes]
    else:
        all_wnids = wnids
    names, full_names = read_names(src, wnids)
    train = index_train(src, all_wnids, per_class)
    val = index_val(src, all_wnids, per_class)
    keep = len(wnids)
    members, labels = {}, {}
    for split, (m, y) in (("train", train), ("val", val)):
        members[split] = [f for f, label in zip(m, y, strict=True) if label < keep]
        labels[split] = [label for label in y if label < keep]
    return Index(wnids, names, full_names, members, labels)


# --- decoding ----------------------------------------------------------------------------------


def decode_image(data: bytes, member: str) -> tuple[np.ndarray, bool]:
    """One 64×64 RGB uint8 image and whether it was grayscale; DataError names the file."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                w, h = im.size
                raise DataError(f"{member}: expected a 64×64 image, found {w}×{h}")
            im.load()  # decode now: a truncated file fails here, not later in training
            gray = im.mode in ("L", "LA", "I", "I;16", "1")
            return np.asarray(im.convert("RGB"), dtype=np.uint8), gray
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{member}: cannot decode image: {e}") from None


_sources: dict[str, Source] = {}  # one open zip per worker process, not one per task


def _decode_chunk(task, src: Source | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """Decode members into rows [start, start+n) of the memory-mapped output array."""
    path, out_path, start, members = task
    src = src or _sources.get(path) or _sources.setdefault(path, Source(path))
    out = np.load(out_path, mmap_mode="r+")
    gray = 0
    for i, member in enumerate(members):
        try:
            data = src.read(member)
        except (zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"{src.path}: {member}: corrupt zip member: {e}") from None
        out[start + i], g = decode_image(data, f"{src.path}: {member}")
        gray += g
    rows = np.asarray(out[start : start + len(members)], dtype=np.int64)
    # Exact integer moments for the dataset mean/std, summed per chunk so no pass is repeated.
    s1 = rows.sum(axis=(0, 1, 2))
    s2 = (rows * rows).sum(axis=(0, 1, 2))
    out.flush()
    return gray, s1, s2


def decode_split(src: Source, members: list[str], out_path: Path, workers: int, progress) -> dict:
    out = np.lib.format.open_memmap(
        out_path, mode="w+", dtype=np.uint8, shape=(len(members), IMAGE_SIZE, IMAGE_SIZE, 3)
    )
    del out  # workers reopen it by path
    path = str(src.path)
    tasks = [(path, out_path, i, members[i : i + CHUNK]) for i in range(0, len(members), CHUNK)]
    bar = tqdm(
        total=len(members), desc=f"decode {out_path.stem[:-2]}", unit="img", disable=progress
    )
    gray, s1, s2 = 0, np.zeros(3, np.int64), np.zeros(3, np.int64)
    if workers > 1 and len(members) >= MIN_IMAGES_FOR_POOL:
        # spawn, not fork: the caller may hold threads (torch) that fork would copy half-alive.
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        try:
            for task, r in zip(tasks, pool.map(_decode_chunk, tasks), strict=True):
                gray, s1, s2 = gray + r[0], s1 + r[1], s2 + r[2]
                bar.update(len(task[3]))
        finally:  # a bad file stops the decode now, not after every other chunk
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        for task in tasks:
            r = _decode_chunk(task, src)
            gray, s1, s2 = gray + r[0], s1 + r[1], s2 + r[2]
            bar.update(len(task[3]))
    bar.close()
    return {"grayscale": int(gray), "sum": s1.tolist(), "sumsq": s2.tolist()}


# --- the cache ---------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    if os.environ.get("TINY_IMAGENET_CACHE"):
        return Path(os.environ["TINY_IMAGENET_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "tiny-imagenet"


def cache_key(src: Source, classes, per_class) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}\0{classes}\0{per_class}\0".encode())
    h.update(src.identity().encode())
    return h.hexdigest()[:24]


def _decode_into(src: Source, index: Index, folder: Path, workers: int, progress) -> dict:
    stats = {}
    for split in SPLITS:
        members = index.members[split]
        stats[split] = decode_split(src, members, folder / f"{split}_x.npy", workers, progress)
        np.save(folder / f"{split}_y.npy", np.asarray(index.labels[split], dtype=np.int64))
        (folder / f"{split}_files.txt").write_text("\n".join(members) + "\n")
    n = max(len(index.members["train"]) * IMAGE_SIZE * IMAGE_SIZE, 1)
    s1, s2 = np.asarray(stats["train"]["sum"]), np.asarray(stats["train"]["sumsq"])
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    meta = {
        "version": CACHE_VERSION,
        "source": str(src.path),
        "wnids": index.wnids,
        "names": index.names,
        "full_names": index.full_names,
        "mean": mean.tolist(),
        "std": std.tolist(),
        "grayscale": {s: stats[s]["grayscale"] for s in SPLITS},
    }
    # meta.json last: a folder without it is an unfinished decode and is never read.
    (folder / "meta.json").write_text(json.dumps(meta))
    return meta


def _read_folder(folder: Path, mmap: bool) -> tuple[dict, dict[str, Split]]:
    meta = json.loads((folder / "meta.json").read_text())
    mode = "r" if mmap else None
    splits = {
        s: Split(
            np.load(folder / f"{s}_x.npy", mmap_mode=mode),
            np.load(folder / f"{s}_y.npy"),
            tuple((folder / f"{s}_files.txt").read_text().splitlines()),
        )
        for s in SPLITS
    }
    return meta, splits


def load(
    path: str | os.PathLike,
    *,
    classes: int | None = None,
    per_class: int | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> TinyImageNet:
    """Tiny ImageNet at `path` (zip or folder), optionally its first `classes` classes with at most
    `per_class` images of each per split. Decoded on `workers` processes (default: all cores)
    the first time, memory-mapped from the cache after that; `cache=False` decodes to memory."""
    t0 = time.perf_counter()
    src = Source(path)
    workers = workers or os.cpu_count() or 1
    quiet = None if progress is None else not progress  # tqdm: None = only on a terminal
    info = {"subset": {"classes": classes, "per_class": per_class}}
    if not cache:
        with tempfile.TemporaryDirectory(prefix="tiny-imagenet-") as tmp:
            _decode_into(src, build_index(src, classes, per_class), Path(tmp), workers, quiet)
            meta, splits = _read_folder(Path(tmp), mmap=False)
        folder, info["cached"] = None, False
    else:
        root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        folder = root / cache_key(src, classes, per_class)
        info["cached"] = (folder / "meta.json").is_file()
        if not info["cached"]:
            index = build_index(src, classes, per_class)
            partial = root / f"{folder.name}.partial-{uuid.uuid4().hex[:8]}"
            partial.mkdir(parents=True)
            try:
                _decode_into(src, index, partial, workers, quiet)
                # Atomic: readers see a whole cache or none. OSError: another process finished the
                # same decode first; theirs is identical, so use it.
                with contextlib.suppress(OSError):
                    partial.rename(folder)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
        meta, splits = _read_folder(folder, mmap=True)
    info["grayscale"] = meta["grayscale"]
    info["load_seconds" if info["cached"] else "decode_seconds"] = round(
        time.perf_counter() - t0, 2
    )
    return TinyImageNet(
        train=splits["train"],
        val=splits["val"],
        wnids=tuple(meta["wnids"]),
        names=tuple(meta["names"]),
        full_names=tuple(meta["full_names"]),
        mean=tuple(meta["mean"]),
        std=tuple(meta["std"]),
        source=str(src.path),
        cache_dir=folder,
        info=info,
    )


# --- CLI ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="python -m training.data", description="Inspect (and decode and cache) Tiny ImageNet."
    )
    p.add_argument("path", help="tiny-imagenet-200.zip or an extracted tiny-imagenet-200/ folder")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--classes", type=int, help="keep the first K classes of wnids.txt")
    p.add_argument("--per-class", type=int, help="keep at most M images per class and split")
    p.add_argument("--cache-dir", help=f"default: {default_cache_dir()} ($TINY_IMAGENET_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="decode to memory, write nothing")
    p.add_argument("--workers", type=int, help="decode processes (default: all cores)")
    args = p.parse_args(argv)
    try:
        ds = load(
            args.path,
            classes=args.classes,
            per_class=args.per_class,
            cache=not args.no_cache,
            cache_dir=args.cache_dir,
            workers=args.workers,
        )
    except DataError as e:
        return fail(e)
    report = ds.describe()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        print(f"{key:>15}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

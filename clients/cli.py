"""The command line: `python -m clients predict|evaluate|explain ...`.

    python -m clients predict photos/ cat.jpg --out results.jsonl   # again to resume
    python -m clients evaluate tiny-imagenet-200/val
    python -m clients explain photos/ --out maps/                   # one overlay PNG per class

explain writes, for each image, one PNG per explained class (the class-activation map drawn over
the image, as the service's format=png draws it, enlarged to 256 px for smaller images) named
IMAGE.RANK-LABEL.png, and a record per
input to DIR/explanations.jsonl; inputs already recorded there are skipped, as in predict.

predict walks directories (sorted), skips files that are not images by their extension, and
appends one record per input to --out (JSON lines, or CSV when it ends in .csv; stdout without
--out) as results arrive, in input order. Inputs already in --out are skipped, so a run that was
interrupted or lost the service is resumed by running it again: nothing recorded is sent again
and nothing is recorded twice. Images the service refused are recorded with their error.

Exit status: 0 every image classified; 1 some image failed (now or in the run being resumed);
2 bad usage (a missing or wrong API key too); 3 the service could not be used (unreachable, or
it refused the requests themselves): the results so far are kept, run again to resume; 130
interrupted.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from clients.client import (
    API_KEY_ENV,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_EXPLAIN_TOP_K,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_TOP_K,
    DEFAULT_URL,
    MAX_TOP_K,
    TinyImageNetClient,
)
from clients.errors import ClientError
from clients.results import Result
from common.cli import Parser

# What the service decodes (inference/preprocess.py); anything else would only come back refused.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif"})
CSV_FIELDS = [
    "input",
    "model",
    "wnid",
    "label",
    "probability",
    "confident",
    "top_k_wnids",
    "top_k_probabilities",
    "error_code",
    "error_message",
]
LISTED = 10  # how many skipped files or failures are named before "and N more"
EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 1, 2, 3, 130


class UsageError(Exception):
    pass


def warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def warn_list(header: str, lines: list[str]) -> None:
    if lines:
        warn(header)
        for line in lines[:LISTED]:
            warn(f"  {line}")
        if len(lines) > LISTED:
            warn(f"  ... and {len(lines) - LISTED} more")


# --- inputs ------------------------------------------------------------------------------------


def is_image(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_SUFFIXES


def walk(paths: list[str]) -> tuple[list[str], list[str]]:
    """(files to send, other files skipped) under `paths`, in a stable order and without
    repeats: a folder's image files, and every file named by itself."""
    images, others = [], []
    for raw in paths:
        if os.path.isdir(raw):
            for root, dirs, files in os.walk(raw):
                dirs.sort()  # os.walk descends in this list's order
                for name in sorted(files):
                    path = os.path.normpath(os.path.join(root, name))
                    (images if is_image(path) else others).append(path)
        elif os.path.isfile(raw):
            # Named on its own, a file is sent whatever its name: if it is not an image, the
            # service says so and it is recorded as failed, not skipped.
            images.append(os.path.normpath(raw))
        else:
            raise UsageError(f"no such file or directory: {raw}")
    return list(dict.fromkeys(images)), list(dict.fromkeys(others))


# --- results files -----------------------------------------------------------------------------


def is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def csv_row(result: Result) -> list:
    if result.error is not None:
        # One line per record, so that a torn last record is found by its missing newline.
        message = " ".join(result.error.message.split())
        return [result.input, "", "", "", "", "", "", "", result.error.code, message]
    top = result.predictions
    return [
        result.input,
        result.model or "",
        top[0].wnid,
        top[0].label,
        top[0].probability,
        "" if result.confident is None else str(result.confident).lower(),
        " ".join(p.wnid for p in top),
        " ".join(str(p.probability) for p in top),
        "",
        "",
    ]


def drop_torn_tail(path: Path) -> None:
    """A run killed while writing can leave half a record at the end: cut it off, so that its
    input counts as not done and is classified again."""
    with path.open("rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        pos = end
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                f.truncate(pos + newline + 1)
                return
        f.truncate(0)


def read_previous(path: Path) -> dict[str, bool]:
    """Inputs already recorded in a results file → whether they were classified."""
    if not path.exists():
        return {}
    drop_torn_tail(path)
    with path.open(newline="", encoding="utf-8") as f:
        if is_csv(path):
            reader = csv.DictReader(f)
            if reader.fieldnames not in (None, CSV_FIELDS):
                raise UsageError(f"{path} is not a results file of this tool (its header differs)")
            return {row["input"]: not row["error_code"] for row in reader}
        done = {}
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                done[record["input"]] = "error" not in record
            except (ValueError, KeyError, TypeError):
                raise UsageError(f"{path}:{number} is not a record of this tool") from None
        return done


@contextmanager
def results_sink(path: Path | None) -> Iterator[Callable[[Result], None]]:
    """A function that appends one record and flushes it, so that what was written survives
    an interrupted run."""
    if path is None:

        def to_stdout(result: Result) -> None:
            print(json.dumps(result.to_dict()), flush=True)

        yield to_stdout
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="", encoding="utf-8") as f:
        if is_csv(path):
            writer = csv.writer(f, lineterminator="\n")
            if f.tell() == 0:
                writer.writerow(CSV_FIELDS)

            def write(result: Result) -> None:
                writer.writerow(csv_row(result))
                f.flush()

        else:

            def write(result: Result) -> None:
                f.write(json.dumps(result.to_dict()) + "\n")
                f.flush()

        yield write


# --- commands ----------------------------------------------------------------------------------


def make_client(args: argparse.Namespace, transport: httpx.BaseTransport | None):
    return TinyImageNetClient(
        args.url,
        timeout=args.timeout,
        retries=args.retries,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        api_key=args.api_key,
        transport=transport,
    )


def unusable(e: ClientError) -> tuple[str, int]:
    """(the line to print, the exit status) when the service refuses the requests themselves: a
    key problem is a usage error with its fix; anything else, the service unavailable."""
    if e.code == "unauthorized":
        fix = f"pass --api-key KEY or set {API_KEY_ENV}"
        return f"error: the service refused the API key, or needs one: {fix}", EXIT_USAGE
    return f"error: the service could not be used: {e}", EXIT_UNAVAILABLE


def failure_line(result: Result) -> str:
    return f"{result.input}: {result.error}"


def predict(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    images, others = walk(args.paths)
    warn_list(f"warning: skipping {len(others)} non-image files:", others)
    out = Path(args.out) if args.out else None
    previous = read_previous(out) if out else {}
    todo = [p for p in images if p not in previous]
    failed_before = sum(1 for p in images if p in previous and not previous[p])
    classified, unsure, failures = 0, 0, []
    stopped: str | None = None
    start = time.perf_counter()
    with results_sink(out) as write, make_client(args, transport) as client:
        results = client.classify_iter(
            todo, top_k=args.top_k, progress=args.progress, min_confidence=args.min_confidence
        )
        try:
            for result in results:
                write(result)
                if result.ok:
                    classified += 1
                    unsure += result.confident is False
                else:
                    failures.append(result)
        except ClientError as e:
            stopped, status = unusable(e)
        except KeyboardInterrupt:
            stopped = "interrupted"
    seconds = time.perf_counter() - start

    warn_list(f"failed ({len(failures)}):", [failure_line(r) for r in failures])
    done = classified + len(failures)
    summary = f"predict: {classified} classified, {len(failures)} failed"
    if unsure:
        summary += f", {unsure} below min_confidence (confident: false)"
    if previous:
        summary += f", {len(images) - len(todo)} already in {out} ({failed_before} of them failed)"
    if done:
        summary += f"; {done / seconds:.1f} images/s over {seconds:.1f} s"
    warn(summary)
    if stopped:
        left = len(todo) - done
        resume = f"; run the same command again to do the {left} left" if out else ""
        warn(f"{stopped}{resume}")
        return EXIT_INTERRUPTED if stopped == "interrupted" else status
    return EXIT_FAILED if failures or failed_before else 0


def overlay_name(name: str, rank: int, label: str) -> str:
    """photos/a/cat.jpg, rank 1, "Egyptian cat" → photos__a__cat.1-egyptian-cat.png: unique per
    input path and rank, and says what the map is of."""
    stem = os.path.splitext(os.path.normpath(name).lstrip(os.sep))[0]
    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")[:40] or "class"
    return f"{stem.replace(os.sep, '__')}.{rank}-{slug}.png"


# An overlay of a smaller image is drawn on it enlarged to this long side: Tiny ImageNet's own
# 64×64 images would give maps too small to see.
OVERLAY_MIN_SIDE = 256


def explain(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    images, others = walk(args.paths)
    warn_list(f"warning: skipping {len(others)} non-image files:", others)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    records = folder / "explanations.jsonl"
    previous = read_previous(records)
    todo = [p for p in images if p not in previous]
    failed_before = sum(1 for p in images if p in previous and not previous[p])
    written, failures, stopped = 0, [], None
    with results_sink(records) as write, make_client(args, transport) as client:
        results = client.explain_iter(
            todo,
            top_k=args.top_k,
            cls=args.cls,
            progress=args.progress,
            min_confidence=args.min_confidence,
        )
        try:
            for result in results:
                if result.ok:
                    for c in result.predictions:
                        name = overlay_name(result.input, c.rank, c.label)
                        result.overlay(c.rank, min_side=OVERLAY_MIN_SIDE).save(folder / name)
                        written += 1
                else:
                    failures.append(result)
                write(result)
        except ClientError as e:
            stopped, status = unusable(e)
        except KeyboardInterrupt:
            stopped = "interrupted"
    warn_list(f"failed ({len(failures)}):", [failure_line(r) for r in failures])
    warn(f"explain: {written} overlays in {folder}, {len(failures)} failed, "
         f"{len(images) - len(todo)} already done ({failed_before} of them failed)")  # fmt: skip
    if stopped:
        warn(f"{stopped}; run the same command again to do the rest")
        return EXIT_INTERRUPTED if stopped == "interrupted" else status
    return EXIT_FAILED if failures or failed_before else 0


def read_annotations(path: Path) -> list[tuple[str, str]]:
    """(file name, wnid) per line of val_annotations.txt: name, wnid and a box, tab-separated."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"cannot read annotations {path}: {e.strerror or e}") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise UsageError(f"{path}:{number}: expected 'file<TAB>wnid...', got {line!r}")
        pairs.append((fields[0], fields[1].strip()))
    if not pairs:
        raise UsageError(f"{path} lists no images")
    return pairs


def labelled_folder(folder: Path, annotations: str | None) -> tuple[Path, Path]:
    """(images folder, annotations file) of the official val layout; the dataset root works
    too."""
    at_root = not (folder / "val_annotations.txt").exists()
    if annotations is None and at_root and (folder / "val" / "val_annotations.txt").exists():
        folder = folder / "val"
    notes = Path(annotations) if annotations else folder / "val_annotations.txt"
    images = folder / "images" if (folder / "images").is_dir() else folder
    return images, notes


def evaluate(args: argparse.Namespace, transport: httpx.BaseTransport | None) -> int:
    if not os.path.isdir(args.dir):
        raise UsageError(f"no such directory: {args.dir}")
    images, notes = labelled_folder(Path(args.dir), args.annotations)
    truth = read_annotations(notes)[: args.limit]
    paths = [str(images / name) for name, _ in truth]
    top1 = top5 = 0
    failures: list[Result] = []
    model = None
    start = time.perf_counter()
    with make_client(args, transport) as client:
        try:
            results = client.classify_iter(paths, top_k=5, progress=args.progress)
            for result, (_, wnid) in zip(results, truth, strict=True):
                if not result.ok:
                    failures.append(result)
                    continue
                model = result.model
                top1 += result.top1.wnid == wnid
                top5 += wnid in {p.wnid for p in result.predictions[:5]}
        except ClientError as e:
            line, status = unusable(e)
            warn(line)
            return status
    seconds = time.perf_counter() - start
    classified = len(paths) - len(failures)
    report = {
        "model": model,
        "images": len(paths),
        "classified": classified,
        "failed": len(failures),
        "top1": top1 / classified if classified else None,
        "top5": top5 / classified if classified else None,
        "seconds": round(seconds, 3),
        "images_per_second": round(len(paths) / seconds, 1),
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
    }
    warn_list(f"failed ({len(failures)}):", [failure_line(r) for r in failures])
    if classified:
        warn(
            f"evaluate: top-1 {top1 / classified:.2%}, top-5 {top5 / classified:.2%} over "
            f"{classified} images ({len(failures)} failed); {report['images_per_second']} "
            f"images/s over {seconds:.1f} s"
        )
    print(json.dumps(report))
    return EXIT_FAILED if failures else 0


# --- arguments ---------------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def top_k(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_TOP_K:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_TOP_K}, got {value}")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability from 0 to 1, got {text!r}")
    return value


def add_min_confidence(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--min-confidence",
        type=probability,
        metavar="P",
        help="mark answers whose top-1 probability is below P as confident: false (they are "
        "still listed); GET /model's calibration.selective gives P for 80%% and 90%% top-1. "
        "Default: the service's TIN_MIN_CONFIDENCE, else no judgement",
    )


def add_client_options(p: argparse.ArgumentParser) -> None:
    url = os.environ.get("TIN_URL", DEFAULT_URL)
    p.add_argument("--url", default=url, help=f"the service (default $TIN_URL or {DEFAULT_URL})")
    p.add_argument("--batch-size", type=positive, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"images per request (default {DEFAULT_BATCH_SIZE})")  # fmt: skip
    p.add_argument("--concurrency", type=positive, default=DEFAULT_CONCURRENCY, metavar="N",
                   help=f"requests in flight (default {DEFAULT_CONCURRENCY})")  # fmt: skip
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
                   help=f"seconds to wait for an answer (default {DEFAULT_TIMEOUT:g})")  # fmt: skip
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="N", help="per request")
    p.add_argument(
        "--api-key",
        metavar="KEY",
        help=f"for a service that requires one (default ${API_KEY_ENV}); prefer the variable: "
        "an argument shows in the process list",
    )
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m clients",
        description="Classify images with the Tiny ImageNet service.",
        epilog="Exit status: 0 all classified, 1 some image failed, 2 bad usage or API key, "
        "3 service unavailable (run again to resume), 130 interrupted.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser(
        "predict",
        help="classify files and folders",
        description="Classify image files (folders are walked); resumable with --out.",
    )
    pr.add_argument("paths", nargs="+", metavar="PATH")
    k_help = f"classes per image, likeliest first (default {DEFAULT_TOP_K})"
    pr.add_argument("--top-k", type=top_k, default=DEFAULT_TOP_K, metavar="K", help=k_help)
    add_min_confidence(pr)
    pr.add_argument(
        "--out",
        metavar="FILE",
        help="append records here (.csv: CSV, else JSON lines) and skip inputs already in it; "
        "default: JSON lines on stdout",
    )
    add_client_options(pr)
    ev = sub.add_parser(
        "evaluate",
        help="top-1/top-5 accuracy on a labelled folder",
        description="Top-1 and top-5 accuracy through the service on a folder in the official "
        "Tiny ImageNet val layout (DIR/images/*.JPEG, DIR/val_annotations.txt). Prints a JSON "
        "report on stdout.",
    )
    ev.add_argument("dir", metavar="DIR")
    ev.add_argument("--annotations", metavar="FILE", help="default DIR/val_annotations.txt")
    ev.add_argument("--limit", type=positive, metavar="N", help="only the first N images")
    add_client_options(ev)
    ex = sub.add_parser(
        "explain",
        help="where the model looked: one overlay PNG per image and class",
        description="Class-activation maps of image files (folders are walked), drawn over each "
        "image (enlarged to 256 px where smaller) into DIR as IMAGE.RANK-LABEL.png, with a "
        "record per input in "
        "DIR/explanations.jsonl; resumable. Needs numpy and Pillow.",
    )
    ex.add_argument("paths", nargs="+", metavar="PATH")
    ex.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    which = ex.add_mutually_exclusive_group()
    which.add_argument(
        "--top-k", type=top_k, default=DEFAULT_EXPLAIN_TOP_K, metavar="K", help="the K most likely"
    )
    which.add_argument("--class", dest="cls", metavar="CLASS",
                       help="this class instead: a wnid, or its label (tabby)")  # fmt: skip
    add_min_confidence(ex)
    add_client_options(ex)
    return p


def main(argv: list[str] | None = None, transport: httpx.BaseTransport | None = None) -> int:
    """Run the CLI; `transport` replaces the network (tests)."""
    args = parser().parse_args(argv)
    command = {"predict": predict, "evaluate": evaluate, "explain": explain}[args.command]
    try:
        return command(args, transport)
    except UsageError as e:
        warn(f"error: {e}")
        return EXIT_USAGE

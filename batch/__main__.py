"""python -m batch INPUT... --out OUTPUT [--format parquet|jsonl] [--top-k 5] [--min-confidence P]
    [--address ADDR]
    [--actors N] [--threads T] [--model model.onnx] [--backend auto] [--precision auto]

Top-k classes for any number of images, on Ray Data. Inputs are folders (recursively), globs,
text files listing one path a line, or files, on any filesystem pyarrow knows (s3://...). The
output folder receives Parquet (or JSONL) files of path, top-k wnids, labels, probabilities,
confident (with --min-confidence) and error; rerunning the same command skips the paths already
there, so a killed job resumes and loses nothing it had written. Without --address (or
RAY_ADDRESS) it runs on an embedded local Ray. Prints one JSON line: inputs, skipped, written,
errors, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from batch.pipeline import BATCH_SIZE, predict_dataset
from batch.sink import FORMATS, ROWS_PER_FILE
from common.cli import ConfigError, Parser, fail
from inference.backend import ENGINES, PRECISIONS, EngineError, ModelFileError


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m batch", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="folders, globs, list files, files")
    p.add_argument("--out", required=True, help="output folder (local or URI)")
    p.add_argument("--format", choices=FORMATS, default="parquet")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per image")
    p.add_argument("--min-confidence", type=float, metavar="P",
                   help="fill the confident column: top-1 probability >= P (the model card's "
                        "calibration.selective gives P for 80%% and 90%% top-1)")  # fmt: skip
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else local)")
    p.add_argument("--actors", type=int,
                   help="inference actors, one engine each (default: one per CPU)")  # fmt: skip
    p.add_argument("--threads", type=int,
                   help="engine threads per actor (default: the CPUs over the actors)")  # fmt: skip
    p.add_argument("--model", help="exported ONNX model (default: TIN_MODEL, models/model.onnx)")
    env = os.environ
    p.add_argument("--backend", default=env.get("TIN_BACKEND", "auto"),
                   help=f"{' | '.join(ENGINES)} (default: TIN_BACKEND, else auto)")  # fmt: skip
    p.add_argument("--precision", default=env.get("TIN_PRECISION", "auto"),
                   help=f"{' | '.join(PRECISIONS)} (default: TIN_PRECISION)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="images per model call")
    p.add_argument("--rows-per-file", type=int, default=ROWS_PER_FILE, help=argparse.SUPPRESS)
    p.add_argument("--decode-cpus", type=float, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.backend not in ENGINES or a.precision not in PRECISIONS:
        p.error(f"--backend takes {', '.join(ENGINES)}; --precision {', '.join(PRECISIONS)}")
    try:
        report = run(a)
    except (ConfigError, ModelFileError, EngineError) as e:
        return fail(e)
    print(json.dumps(report))
    return 0


def run(a) -> dict:
    return predict_dataset(
        a.inputs,
        a.out,
        fmt=a.format,
        top_k=a.top_k,
        address=a.address,
        actors=a.actors,
        threads=a.threads,
        model=a.model,
        engine=a.backend,
        precision=a.precision,
        batch_size=a.batch_size,
        rows_per_file=a.rows_per_file,
        decode_cpus=a.decode_cpus,
        min_confidence=a.min_confidence,
    )


if __name__ == "__main__":
    sys.exit(main())

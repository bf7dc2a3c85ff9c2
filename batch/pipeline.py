"""Offline batch prediction on Ray Data: the pipeline and the one call that runs it.

paths -> read + decode (a map_batches step running `inference.preprocess.decode`, the service's own
code; Ray fuses it into the actors below unless told otherwise) -> predict (map_batches on an
actor pool, one backend per actor: inference.backend.open_backend, the engine the service would
choose there) -> AtomicDatasink (batch/sink.py). Each result row is path, top-k wnids, labels,
probabilities, and error ({code, message} or null): a file that cannot be read or decoded is a
row with its error, and the job goes on.

Without an address (or RAY_ADDRESS) the job runs on an embedded local Ray with this machine's
CPUs; with one, on that cluster, the project's packages shipped to it as py_modules.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.inputs import filesystem, is_regular, list_inputs
from batch.sink import (
    FORMATS,
    ROWS_PER_FILE,
    SCHEMA,
    AtomicDatasink,
    done_paths,
    read_results,
    remove_partial,
)
from common.cli import ConfigError
from inference.answers import confident
from inference.contract import IMAGE_SIZE, int8_paths

PROJECT_PACKAGES = ("serving", "export", "common", "batch")  # what the workers import
BATCH_SIZE = 64  # images per decode step and per model call


def default_model() -> str:
    """TIN_MODEL as the service reads it, else the project's shipped models/model.onnx."""
    return os.environ.get("TIN_MODEL") or str(Path(__file__).parents[1] / "models/model.onnx")


def read_and_decode(batch: dict) -> dict:
    """Ray map_batches step: read each file and decode it with the service's own code. A file that
    cannot be read or decoded keeps its row, with a zero image and its error."""
    from inference.preprocess import ImageError, decode

    paths = list(batch["path"])
    images = np.zeros((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    codes, messages = [""] * len(paths), [""] * len(paths)  # "": decoded
    for i, path in enumerate(paths):
        try:
            fs, inner = filesystem(path)
            if "://" not in path and os.path.exists(inner) and not is_regular(inner):
                codes[i], messages[i] = "not_a_file", f"{path} is not a regular file"
                continue  # a FIFO would block the read forever, a device would never end
            with fs.open_input_stream(inner) as f:
                data = f.read()
            images[i] = decode(data)
        except ImageError as e:
            codes[i], messages[i] = e.code, e.message
        except OSError as e:  # missing, a folder, no permission, a network error
            codes[i], messages[i] = "unreadable", f"cannot read {path}: {e}"
    return {"path": paths, "image": images, "error_code": codes, "error_message": messages}


def model_files(model: str) -> dict[str, bytes]:
    """The fp32 model and the forms beside it (INT8 ONNX, OpenVINO IR), by file name: they go
    through Ray's object store, so no node needs the files, and each actor picks among them as
    the service would on its machine."""
    fp32 = Path(model)
    onnx_int8, ir = int8_paths(fp32)
    files = [fp32, onnx_int8, ir, ir.with_suffix(".bin")]
    return {f.name: f.read_bytes() for f in files if f.is_file()}


class Predictor:
    """Ray actor for map_batches: the model's forms written to a private folder, then the
    service's backend on them (`open_backend`, `engine` and `precision` as TIN_BACKEND and
    TIN_PRECISION take them) with `threads` threads; top-k per image, ranked as the service ranks
    them (inference/answers.py `top_k`), probabilities unrounded."""

    def __init__(self, files, fp32_name: str, engine: str, precision: str, top_k: int, threads,
                 min_confidence: float | None = None):  # fmt: skip
        from inference.backend import open_backend

        if not isinstance(files, dict):  # Ray Data hands constructor arguments over as given
            import ray

            files = ray.get(files)
        self.folder = tempfile.TemporaryDirectory(prefix="tin-batch-")
        for name, data in files.items():
            Path(self.folder.name, name).write_bytes(data)
        path = Path(self.folder.name, fp32_name)
        self.backend = open_backend(path, engine, precision, BATCH_SIZE, threads)
        card = self.backend.card
        self.wnids, self.names, self.k = np.array(card.wnids), np.array(card.names), top_k
        self.least = min_confidence

    def __call__(self, batch: dict) -> pa.Table:
        codes, messages = batch["error_code"], batch["error_message"]
        ok = np.array([c == "" for c in codes], bool)
        n = len(ok)
        wnids, labels, probs, sure = [None] * n, [None] * n, [None] * n, [None] * n
        if ok.any():
            p = self.backend.predict(np.ascontiguousarray(batch["image"][ok]))
            order = np.argsort(-p, axis=1, kind="stable")[:, : self.k]
            top = np.take_along_axis(p, order, axis=1)
            for j, i in enumerate(np.flatnonzero(ok)):
                wnids[i], labels[i] = self.wnids[order[j]].tolist(), self.names[order[j]].tolist()
                probs[i] = top[j]
                sure[i] = confident(p[j], self.least)
        pairs = zip(codes, messages, strict=True)
        errors = [None if c == "" else {"code": c, "message": m} for c, m in pairs]
        columns = [list(batch["path"]), wnids, labels, probs, sure, errors]
        arrays = [pa.array(c, f.type) for c, f in zip(columns, SCHEMA, strict=True)]
        return pa.Table.from_arrays(arrays, schema=SCHEMA)


# --- running it ---


def connect(address: str | None) -> None:
    """Embedded local Ray with this machine's CPUs, or the cluster at `address`. On a cluster the
    project's packages (PROJECT_PACKAGES) travel as py_modules, so the nodes need only the pip
    packages of the `batch` extra."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        root = Path(__file__).parents[1]
        packages = [str(root / p) for p in PROJECT_PACKAGES if (root / p / "__init__.py").is_file()]
        ray.init(address=address, runtime_env={"py_modules": packages}, log_to_driver=False)
    else:
        # An embedded Ray on this machine alone: its token authentication is on (this process
        # made the token) and its warning that it is, printed on every run, is noise here.
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        import psutil  # a dependency of Ray

        from batch import reaper

        reaper.watch(psutil.Process().children(recursive=True))  # Ray's processes, with the job


def plan(cpus: float, actors: int | None, threads: int | None) -> tuple[int, int, float]:
    """(actors, engine threads per actor, CPUs each actor reserves) for a cluster of `cpus`.

    By default one single-threaded actor per CPU: no intra-op synchronisation, and while one
    actor decodes its next batch the others compute. Measured on 2 cores, 20,000 images,
    OpenVINO INT8: 2 actors × 1 thread 45.6-47.6 s against 50.5-53.8 s for 1 actor × 2 threads.
    The reservation is what can deadlock: Ray schedules by reserved CPUs, and actors that reserve
    every CPU leave none for the read and write tasks, so the pool waits for input that is never
    produced (it hung silently on 2 cores). Actors therefore reserve at most cpus - 1 between
    them (fractions where that is under one each; 0 on a 1-CPU machine), whatever --actors asks.
    Threads are not reservations: by default the actors' threads add up to the CPUs.
    """
    actors = actors or max(1, int(cpus))
    threads = threads or max(1, int(cpus) // actors)
    reserve = max(0.0, min(1.0, (cpus - 1) / actors))
    return actors, threads, reserve


def pipeline(todo: list[str], model: str, backend: tuple, top_k: int, jobs: tuple, batch_size,
             decode_cpus, min_confidence=None):  # fmt: skip
    """The Ray Dataset: paths -> read + decode -> predict on the actor pool."""
    import ray

    from inference.backend import choose

    choose(model, *backend)  # here, not in the actors: a bad choice or file fails at once
    n_actors, n_threads, reserve = jobs
    files = ray.put(model_files(model))
    # Blocks are the unit of work and of progress: a few per CPU for a small job, at most 1024
    # rows for a large one.
    per_block = min(1024, math.ceil(len(todo) / (8 * max(ray.cluster_resources()["CPU"], 1))))
    table = pa.table({"path": todo})
    blocks = [table.slice(i, per_block) for i in range(0, len(todo), per_block)]
    return (
        ray.data.from_arrow(blocks)
        .map_batches(
            read_and_decode,
            batch_size=batch_size,
            batch_format="numpy",
            num_cpus=reserve if decode_cpus is None else decode_cpus,
        )
        .map_batches(
            Predictor,
            fn_constructor_args=(
                files,
                Path(model).name,
                *backend,
                top_k,
                n_threads,
                min_confidence,
            ),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=n_actors),
            num_cpus=reserve,
        )
    )


def write_args(out: str) -> dict:
    """Ray options of the write tasks: no CPU reserved (writing a small file is nothing, and a
    task waiting for a CPU an actor holds could wait forever), and, for a local folder, this
    node, not whichever node has room (the files would end up scattered over the nodes)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    args = {"num_cpus": 0}
    if "://" not in out:
        node = ray.get_runtime_context().get_node_id()
        args["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
    return args


def predict_dataset(
    inputs: list[str],
    out: str,
    *,
    fmt: str = "parquet",
    top_k: int = 5,
    address: str | None = None,
    actors: int | None = None,
    threads: int | None = None,
    model: str | None = None,
    engine: str = "auto",
    precision: str = "auto",
    batch_size: int = BATCH_SIZE,
    rows_per_file: int = ROWS_PER_FILE,
    decode_cpus: float | None = None,
    min_confidence: float | None = None,
) -> dict:
    """Classify every image of `inputs` not yet in `out` and add their rows to `out`.

    top_k above the model's class count lists every class (as the service does). decode_cpus:
    None (default) decodes inside the predict actors (Ray fuses the two steps when their
    resources match): no copy of the decoded images between processes, the fastest for small
    images. A number runs decoding as separate tasks reserving that many CPUs each, which spreads
    an expensive decode (large photos) over every CPU instead of over the actors.
    min_confidence: each row's `confident` says whether its top-1 probability reaches it (as
    the service's "confident"); None leaves the column null.

    Returns {"inputs", "skipped" (already in out), "written" and "errors" (this run), "seconds"
    (the whole call) and "pipeline_seconds" (Ray Data's execution, actor start-up included)}.
    """
    import ray

    start = time.perf_counter()
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if top_k < 1:
        raise ConfigError(f"top_k must be at least 1, got {top_k}")
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise ConfigError(f"min_confidence is a probability from 0 to 1, got {min_confidence}")
    model = model or default_model()
    paths = list_inputs(inputs)
    remove_partial(out)
    done = done_paths(out)
    todo = [p for p in paths if p not in done]
    report = {"inputs": len(paths), "skipped": len(paths) - len(todo), "written": 0, "errors": 0}
    if todo:
        connect(address)
        jobs = plan(ray.cluster_resources()["CPU"], actors, threads)
        ds = pipeline(todo, model, (engine, precision), top_k, jobs, batch_size, decode_cpus,
                      min_confidence)  # fmt: skip
        t0 = time.perf_counter()
        ds.write_datasink(AtomicDatasink(out, fmt, rows_per_file), ray_remote_args=write_args(out))
        report["pipeline_seconds"] = round(time.perf_counter() - t0, 2)
        new = read_results(out).filter(pc.is_in(pc.field("path"), pa.array(todo)))
        report["written"] = new.num_rows
        report["errors"] = new.num_rows - new.column("error").null_count
    report["seconds"] = round(time.perf_counter() - start, 2)
    return report

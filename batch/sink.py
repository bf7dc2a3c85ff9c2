"""What a batch job writes: result files, each written under a temporary name and renamed when
complete, and what a folder of them already holds (so that a rerun skips it).

Ray's write_parquet and write_json open the final file name and stream into it: a job killed
mid-write leaves a truncated file under the final name (measured: a 0-byte JSON, a 4-byte
Parquet), which a resume would then fail to read, or read in part.
"""

from __future__ import annotations

import json
import posixpath
import uuid

import pyarrow as pa
import pyarrow.fs as pafs

from batch.inputs import filesystem

FORMATS = ("parquet", "jsonl")
ROWS_PER_FILE = 2000  # Ray gathers this many rows for a write task: what a kill can lose at most
ERROR_TYPE = pa.struct([("code", pa.string()), ("message", pa.string())])
SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("wnids", pa.list_(pa.string())),
        ("labels", pa.list_(pa.string())),
        ("probabilities", pa.list_(pa.float32())),
        # top-1 probability >= --min-confidence; null without one, or for a failed image
        ("confident", pa.bool_()),
        ("error", ERROR_TYPE),
    ]
)


def output_files(out: str) -> tuple[pafs.FileSystem, list[str]]:
    """The finished result files under `out` (temporary ones start with a dot)."""
    fs, root = filesystem(out)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        return fs, []
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=False))
    names = [
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and not posixpath.basename(i.path).startswith(".")
        and i.path.endswith(tuple(f".{f}" for f in FORMATS))
    ]
    return fs, sorted(names)


def read_results(out: str, columns: list[str] | None = None) -> pa.Table:
    """Every row already written under `out`, Parquet and JSONL files alike."""
    import pyarrow.json as pajson
    import pyarrow.parquet as pq

    fs, names = output_files(out)
    tables = []
    for name in names:
        if name.endswith(".parquet"):
            tables.append(pq.read_table(name, filesystem=fs, schema=SCHEMA, columns=columns))
        else:
            with fs.open_input_stream(name) as f:
                options = pajson.ParseOptions(explicit_schema=SCHEMA)
                table = pajson.read_json(f, parse_options=options)
            tables.append(table.select(columns) if columns else table)
    empty = SCHEMA.empty_table()
    return pa.concat_tables(tables) if tables else empty.select(columns) if columns else empty


def done_paths(out: str) -> set[str]:
    return set(read_results(out, ["path"]).column("path").to_pylist())


def remove_partial(out: str) -> None:
    """Delete the temporary files a killed job left, so that a write task of that job still
    running cannot rename its file into place now that this run has listed what is done."""
    fs, root = filesystem(out)
    if fs.get_file_info(root).type == pafs.FileType.Directory:
        for info in fs.get_file_info(pafs.FileSelector(root)):
            name = posixpath.basename(info.path)
            if name.startswith(".") and name.endswith(".tmp"):
                fs.delete_file(info.path)


class AtomicDatasink:
    """A Ray Data Datasink writing each write task's rows to one file, atomically: a file is
    written as `.NAME.tmp` and renamed when complete (atomic on a local or
    POSIX filesystem; on S3 an object appears only when its upload completes). Each run writes
    files named by its own uuid beside the earlier ones; a retried write task rewrites its own
    name, never a second copy. Built lazily as a Datasink subclass so that importing this module
    needs no Ray.
    """

    def __new__(cls, out: str, fmt: str, rows_per_file: int = ROWS_PER_FILE):
        from ray.data import Datasink

        class _Sink(Datasink):
            def __init__(self):
                self.out, self.fmt, self.run_id = out, fmt, uuid.uuid4().hex[:12]

            def on_write_start(self, schema=None) -> None:
                fs, root = filesystem(self.out)
                fs.create_dir(root, recursive=True)

            def write(self, blocks, ctx) -> int:
                tables = [_arrow(b) for b in blocks]
                table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
                if table.num_rows:
                    write_atomically(
                        table, self.out, f"{self.run_id}-{ctx.task_idx:06d}.{self.fmt}"
                    )
                return table.num_rows

            @property
            def min_rows_per_write(self) -> int:
                return rows_per_file

            def get_name(self) -> str:
                return f"Atomic{self.fmt.capitalize()}"

        return _Sink()


def _arrow(block) -> pa.Table:
    if not isinstance(block, pa.Table):  # Ray may hand over a pandas block
        block = pa.Table.from_pandas(block, preserve_index=False)
    return block.select(SCHEMA.names).cast(SCHEMA)


def write_atomically(table: pa.Table, out: str, name: str) -> None:
    import pyarrow.parquet as pq

    fs, root = filesystem(out)
    final, tmp = posixpath.join(root, name), posixpath.join(root, f".{name}.tmp")
    with fs.open_output_stream(tmp) as f:
        if name.endswith(".parquet"):
            pq.write_table(table, f)
        else:
            f.write(to_jsonl(table).encode())
    fs.move(tmp, final)


def to_jsonl(table: pa.Table) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist())

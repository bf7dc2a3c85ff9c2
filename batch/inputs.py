"""Which images a batch job reads: folders (recursively), globs, list files or files, on any
filesystem pyarrow knows (local, s3://, gs://, ...), each input once, in the order given.

Every file found becomes a row: one that is not an image, a dangling link or a FIFO gets its row
with the error (batch/pipeline.py `read_and_decode` never opens anything but a regular file), so
nothing is skipped in silence. A path that exists is taken as it is, even with `[` or `*` in its
name ('photos [2024]'); only a path that does not exist is tried as a glob. On a local disk,
links are followed, each real folder walked once (a link loop ends) and each real file listed
once, under the first name it was found by."""

from __future__ import annotations

import os
import posixpath
import stat

import pyarrow.fs as pafs

LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or any URI pyarrow knows (s3://...).
    Local paths are made absolute, so a rerun from another folder still recognises them."""
    if "://" in path:
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _uri(path: str, inner: str) -> str:
    """`inner` (a path inside the filesystem of `path`) written the way `path` was: as a URI
    with the same scheme, or as a local path."""
    if "://" not in path:
        return inner
    return f"{path.split('://', 1)[0]}://{inner}"


def local_walk(root: str) -> list[str]:
    """Every file under a local folder (links to files, dangling links and special files too),
    sorted; links to folders followed, each real folder once."""
    walked, found = set(), []
    for top, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in walked:
            dirs[:] = []
            continue
        walked.add(real)
        found += (os.path.join(top, f) for f in files)
    return sorted(found)


def is_regular(path: str) -> bool:
    """A regular file (through links): not a FIFO, device, socket or folder, which reading would
    hang on or fail."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def expand(item: str) -> list[str]:
    """One command-line input -> paths: a folder (recursively, every file, sorted), a text file
    listing one path or URI a line (blank lines and `#` comments skipped), a file, or, only
    where no such path exists, a glob (`*`, `?`, `[...]`, `**`)."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    fs, inner = filesystem(item)
    local = "://" not in item
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound and any(c in item for c in "*?["):
        return [_uri(item, p) for p in sorted(ArrowFSWrapper(fs).glob(inner))]
    if info.type == pafs.FileType.Directory:
        if local:
            return local_walk(inner)
        found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
        return [_uri(item, f.path) for f in found if f.type != pafs.FileType.Directory]
    is_list = posixpath.splitext(inner)[1].lower() in LIST_SUFFIXES
    if info.type == pafs.FileType.File and is_list and (not local or is_regular(inner)):
        with fs.open_input_stream(inner) as f:
            lines = f.read().decode().splitlines()
        entries = (s.strip() for s in lines)
        return [e if "://" in e else os.path.abspath(e) for e in entries if e and e[0] != "#"]
    return [_uri(item, inner)]  # a file, or a missing one: its row will say it cannot be read


def list_inputs(items: list[str]) -> list[str]:
    """Every input once, in the order given; a local file once per real file (its first name)."""
    first = {}
    for item in items:
        for path in expand(item):
            key = path if "://" in path else os.path.realpath(path)
            first.setdefault(key, path)
    return list(first.values())

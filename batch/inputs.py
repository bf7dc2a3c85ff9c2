"""Which images a batch job reads: folders (recursively), globs, list files or files, on any
filesystem pyarrow knows (local, s3://, gs://, ...), each input once, in the order given."""

from __future__ import annotations

import os
import posixpath

import pyarrow.fs as pafs

# The suffixes `inference.preprocess` decodes; a folder's other files are not images and are skipped
# (a file named explicitly, in a list or by a glob, is always tried).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif"})
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


def _is_image(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_SUFFIXES


def expand(item: str) -> list[str]:
    """One command-line input -> image paths: a folder (recursively, image suffixes only, sorted),
    a glob (`*`, `?`, `[...]`, `**`), a text file listing one path or URI a line (blank lines and
    `#` comments skipped), or a file."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    fs, inner = filesystem(item)
    if any(c in item for c in "*?["):
        return [_uri(item, p) for p in sorted(ArrowFSWrapper(fs).glob(inner))]
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
        files = (f.path for f in found if f.type == pafs.FileType.File and _is_image(f.path))
        return [_uri(item, p) for p in sorted(files)]
    if info.type == pafs.FileType.File and posixpath.splitext(inner)[1].lower() in LIST_SUFFIXES:
        with fs.open_input_stream(inner) as f:
            lines = f.read().decode().splitlines()
        entries = (s.strip() for s in lines)
        return [e if "://" in e else os.path.abspath(e) for e in entries if e and e[0] != "#"]
    return [_uri(item, inner)]  # a file, or a missing one: its row will say it cannot be read


def list_inputs(items: list[str]) -> list[str]:
    """Every input once, in the order given."""
    return list(dict.fromkeys(p for item in items for p in expand(item)))

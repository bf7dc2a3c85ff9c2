"""Bytes for a file parameter of BentoML's own clients (bentoml.SyncHTTPClient, AsyncHTTPClient,
bentoml.depends(url=...)).

BentoML 1.4.39's client sends a file parameter from a path (str or Path) or a PIL image, and
refuses anything else with a bare AssertionError: _bentoml_impl/client/base.py
ClientFileManager.get_file asserts `isinstance(value, typing.BinaryIO)`, which no real file object
is (typing.BinaryIO is a plain class, not a protocol). This wrapper is one.

    client = bentoml.SyncHTTPClient("http://localhost:3000")
    client.classify(image=BytesUpload(jpeg_bytes, "cat.jpg"), top_k=3)
"""

from __future__ import annotations

import io
import typing


class BytesUpload(io.BytesIO, typing.BinaryIO):
    """In-memory file contents that BentoML's client sends as a multipart file part; `name`
    gives the part's filename and, through its extension, its Content-Type."""

    def __init__(self, data: bytes, name: str = "image.jpg"):
        super().__init__(data)
        self._name = name

    @property
    def name(self) -> str:  # typing.BinaryIO declares `name` read-only
        return self._name

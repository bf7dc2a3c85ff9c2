"""What the client sends: any input (a path, bytes, a PIL image, a numpy array) as the bytes of
one upload, and inputs grouped into requests of bounded size, read lazily in input order."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.errors import ClientError


def describe(image: Any, index: int) -> str:
    """How an input is named in results: its path, or its type and position."""
    if isinstance(image, str | os.PathLike):
        return os.fspath(image)
    return f"<{type(image).__name__} #{index}>"


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "a PIL image or numpy array is sent as PNG, which needs Pillow: pip install pillow"
        ) from None
    return Image


def _is_pil_image(image: Any) -> bool:
    # By module name, so that checking never imports Pillow.
    return type(image).__module__.startswith("PIL.") and hasattr(image, "save")


def _is_array(image: Any) -> bool:
    return all(hasattr(image, a) for a in ("__array__", "dtype", "shape"))


def _png(im) -> bytes:
    # PNG holds these modes as they are (alpha included: the service composites it on white);
    # others (CMYK, YCbCr, F...) have no PNG form.
    if im.mode not in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"):
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def array_to_png(array: Any) -> bytes:
    """An RGB(A) or grayscale uint8 array (H, W[, C]) as PNG bytes. RGB order, not OpenCV's BGR."""
    image_module = _pillow()
    import numpy as np  # present: the caller has a numpy array

    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ClientError(f"numpy images must be uint8 (0..255), got {a.dtype}", "bad_input")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise ClientError(
            f"expected an array of shape (H, W), (H, W, 3) or (H, W, 4), got {a.shape}",
            "bad_input",
        )
    return _png(image_module.fromarray(np.ascontiguousarray(a)))


def image_bytes(image: Any) -> bytes:
    """The file to upload for one input. An input that cannot be one raises ClientError."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        try:
            return Path(image).read_bytes()
        except OSError as e:
            raise ClientError(
                f"cannot read {image}: {e.strerror or e}", "unreadable_file"
            ) from None
    if _is_pil_image(image):
        _pillow()
        return _png(image)
    if _is_array(image):
        return array_to_png(image)
    raise ClientError(
        f"cannot classify a {type(image).__name__}: give a path, bytes, a PIL image or a numpy "
        "array",
        "unsupported_input",
    )


def filename(name: str) -> str:
    # The service sniffs the format from the bytes; the name is only for its logs.
    return os.path.basename(name) if not name.startswith("<") else "image"


@dataclass
class Item:
    index: int
    name: str
    data: bytes = b""
    error: ClientError | None = None
    source: Any = None  # the input itself: what an explanation's overlay draws on


def load(index: int, image: Any) -> Item:
    name = describe(image, index)
    try:
        return Item(index, name, data=image_bytes(image), source=image)
    except ClientError as e:  # this input's problem: an error result in its place
        return Item(index, name, error=e, source=image)


class _Chunker:
    """Groups loaded items into requests of at most `batch_size` images and `max_bytes`."""

    def __init__(self, batch_size: int, max_bytes: int):
        self.batch_size, self.max_bytes = batch_size, max_bytes
        self.chunk: list[Item] = []
        self.size = 0

    def add(self, item: Item) -> list[Item] | None:
        """Add one item; returns the chunk it closed, if any."""
        full = len(self.chunk) >= self.batch_size or self.size + len(item.data) > self.max_bytes
        closed = self.flush() if self.chunk and full else None
        self.chunk.append(item)
        self.size += len(item.data)
        return closed

    def flush(self) -> list[Item] | None:
        chunk, self.chunk, self.size = self.chunk, [], 0
        return chunk or None


def chunks(images: Iterable[Any], batch_size: int, max_bytes: int) -> Iterator[list[Item]]:
    # Lazy: an image is read only when its chunk is about to be sent.
    chunker = _Chunker(batch_size, max_bytes)
    for index, image in enumerate(images):
        if (chunk := chunker.add(load(index, image))) is not None:
            yield chunk
    if (chunk := chunker.flush()) is not None:
        yield chunk


async def achunks(
    images: Iterable[Any] | AsyncIterable[Any], batch_size: int, max_bytes: int
) -> AsyncIterator[list[Item]]:
    if not isinstance(images, AsyncIterable):
        for chunk in chunks(images, batch_size, max_bytes):
            yield chunk
        return
    chunker = _Chunker(batch_size, max_bytes)
    index = 0
    async for image in images:
        if (chunk := chunker.add(load(index, image))) is not None:
            yield chunk
        index += 1
    if (chunk := chunker.flush()) is not None:
        yield chunk

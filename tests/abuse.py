"""Broken files and abusive requests for the HTTP service, each with the answer it must get.

BAD_FILES are files and their error codes (tests/test_serving.py sends them in-process);
`corpus()` adds what a schema-driven fuzzer never sends: a 20000×20000 PNG, a GIF of 1000 frames,
wrong content types, bodies over the upload limit with and without Content-Length, more parts
than allowed. `check()` throws all that at a running service, then a client that hangs up halfway
through its body, then asks whether the service is still healthy and whether it counted any 5xx
itself (/metrics).

    python -m tests.abuse http://127.0.0.1:3000 [MARKDOWN]  # a JSON line; exit 1 on a problem

scripts/fuzz_http.sh runs it after schemathesis; tests/test_fuzz.py runs it on a fixture model.
"""

from __future__ import annotations

import io
import json
import re
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
from PIL import Image

from common.cli import Parser
from tests.serving_fixtures import encode, fixture_array, fixture_images


def png(ihdr: bytes, idat: bytes) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that announces width×height 8-bit RGB pixels and holds almost none."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return png(ihdr, zlib.compress(b"\x00" * 64))


def bomb() -> bytes:
    """A real 1200×1200 PNG (1.44 M pixels) of a few kB: over the tests' 1 M pixel limit."""
    return encode(Image.new("L", (1200, 1200)), "PNG", optimize=True)


def huge_png(side: int = 20000) -> bytes:
    """A complete side×side grayscale PNG (all rows present, black): 400 M pixels in 1.7 MB,
    compressed row by row so that making it never holds the pixels."""
    z = zlib.compressobj(1)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    idat = b"".join([z.compress(row) for _ in range(side)] + [z.flush()])
    return png(struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0), idat)


def long_gif(frames: int = 1000) -> bytes:
    """A 64×64 GIF of `frames` frames: the service reads the first only."""
    ims = [Image.new("L", (64, 64), i % 256) for i in range(frames)]
    buf = io.BytesIO()
    ims[0].save(buf, "GIF", save_all=True, append_images=ims[1:])
    return buf.getvalue()


GOOD_JPEG = fixture_images(1)[0]
GOOD_PNG = encode(fixture_array(1), "PNG")
BAD_FILES = {
    "empty": (b"", "empty_image"),
    "random bytes": (np.random.default_rng(0).bytes(3000), "not_an_image"),
    "text": (b"hello, this is not an image\n", "not_an_image"),
    "truncated JPEG": (GOOD_JPEG[: len(GOOD_JPEG) // 2], "truncated_image"),
    "JPEG header only": (GOOD_JPEG[:40], "truncated_image"),
    "truncated PNG": (GOOD_PNG[: len(GOOD_PNG) // 2], "truncated_image"),
    "TIFF": (encode(fixture_array(0), "TIFF"), "unsupported_format"),
    "SVG": (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        "unsupported_format",
    ),
    "decompression bomb": (bomb(), "image_too_large"),
    "PIL-size bomb": (png_header_only(100_000, 100_000), "image_too_large"),
}


# --- expected answers --------------------------------------------------------------------------


def refused(status: int, code: str) -> Callable[[httpx.Response], str | None]:
    """The answer must be `status` with {"error": {"code": code, "message": ...}}."""

    def expect(r: httpx.Response) -> str | None:
        if r.status_code != status:
            return f"HTTP {r.status_code}, expected {status}: {r.text[:200]}"
        error = json_body(r).get("error")
        if not isinstance(error, dict) or error.get("code") != code or not error.get("message"):
            return f"expected error code {code!r} with a message: {r.text[:200]}"
        return None

    return expect


def answered(codes: tuple[str | None, ...] = (None,)) -> Callable[[httpx.Response], str | None]:
    """A 200; for a batch, per image: None for predictions, else the error code in its place."""

    def expect(r: httpx.Response) -> str | None:
        if r.status_code != 200:
            return f"HTTP {r.status_code}, expected 200: {r.text[:200]}"
        body = json_body(r)
        results = body.get("results", [body])
        got = tuple(x.get("error", {}).get("code") if "error" in x else None for x in results)
        return None if got == codes else f"per image {got}, expected {codes}"

    return expect


def json_body(r: httpx.Response) -> dict:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


# --- the corpus --------------------------------------------------------------------------------


@dataclass
class Abuse:
    name: str
    path: str
    expect: Callable[[httpx.Response], str | None]
    request: dict = field(default_factory=dict)  # httpx.Client.request keyword arguments
    method: str = "POST"


def one(data: bytes, content_type: str = "image/jpeg") -> dict:
    return {"files": {"image": ("x", data, content_type)}}


def raw(data: bytes, content_type: str = "image/jpeg") -> dict:
    return {"content": data, "headers": {"content-type": content_type}}


def many(datas: list[bytes]) -> dict:
    return {"files": [("images", (f"{i}", d, "image/jpeg")) for i, d in enumerate(datas)]}


def broken_files() -> list[Abuse]:
    """Every bad file alone, as a raw body, and all of them in one batch between good ones."""
    # The 1200×1200 "decompression bomb" is refused only under a TIN_MAX_PIXELS below its size,
    # as tests/test_serving.py sets; a 20000×20000 PNG is over any (PIL's own guard included).
    files = {k: v for k, v in BAD_FILES.items() if k != "decompression bomb"}
    files["20000×20000 PNG"] = (huge_png(), "image_too_large")
    cases = []
    for name, (data, code) in files.items():
        cases.append(Abuse(f"file: {name}", "/classify", refused(400, code), one(data)))
        cases.append(Abuse(f"raw body: {name}", "/classify", refused(400, code), raw(data)))
    datas = [GOOD_JPEG, *(d for d, _ in files.values()), GOOD_PNG]
    codes = (None, *(c for _, c in files.values()), None)
    cases.append(Abuse("batch of every bad file", "/classify_batch", answered(codes), many(datas)))
    return cases


def content_types() -> list[Abuse]:
    unsupported = refused(415, "unsupported_media_type")
    no_boundary = raw(b"--x\r\nbroken", "multipart/form-data")
    return [
        Abuse("GIF of 1000 frames", "/classify", answered(), one(long_gif())),
        Abuse("JPEG declared text/plain", "/classify", answered(), one(GOOD_JPEG, "text/plain")),
        Abuse("JSON body", "/classify", unsupported, {"json": {}}),
        Abuse("text body", "/classify", unsupported, raw(b"hi", "text/plain")),
        Abuse("no content type", "/classify", unsupported, {"content": b"x"}),
        Abuse(
            "urlencoded form", "/classify", refused(400, "missing_image"), {"data": {"image": "x"}}
        ),
        Abuse(
            "multipart without boundary", "/classify", refused(400, "bad_multipart"), no_boundary
        ),
        Abuse("raw body to the batch route", "/classify_batch", unsupported, raw(GOOD_JPEG)),
        Abuse("GET /classify", "/classify", refused(405, "method_not_allowed"), method="GET"),
        Abuse("DELETE /labels", "/labels", refused(405, "method_not_allowed"), method="DELETE"),
    ]


def oversized(max_bytes: int, max_images: int) -> list[Abuse]:
    too_large = refused(413, "upload_too_large")
    big = GOOD_JPEG + b"\x00" * max_bytes

    def chunked():  # a generator: httpx sends it chunked, with no Content-Length to refuse
        yield GOOD_JPEG
        for _ in range(max_bytes // 65536 + 2):
            yield b"\x00" * 65536

    # Many empty parts: over Starlette's parser limit (routes.MAX_FORM_FILES), or over the byte
    # limit first if that is small.
    parts = {"files": [("images", ("x", b"", "image/jpeg"))] * 10_001}
    parts_size = len(httpx.Request("POST", "http://x", **parts).read())
    parts_refusal = too_large if parts_size > max_bytes else refused(400, "bad_multipart")
    return [
        Abuse("body over the limit", "/classify", too_large, raw(big)),
        Abuse("multipart over the limit", "/classify", too_large, one(big)),
        Abuse("batch over the limit", "/classify_batch", too_large, many([GOOD_JPEG, big])),
        Abuse("chunked body over the limit", "/classify", too_large, raw(chunked())),
        Abuse(
            f"{max_images + 1} images in a batch",
            "/classify_batch",
            refused(400, "too_many_images"),
            many([GOOD_JPEG] * (max_images + 1)),
        ),
        Abuse("10001 parts", "/classify_batch", parts_refusal, parts),
    ]


def corpus(limits: dict) -> list[Abuse]:
    """Everything above, for a service with these limits (GET /model's "limits")."""
    return [
        *broken_files(),
        *content_types(),
        *oversized(limits["max_upload_bytes"], limits["max_batch_images"]),
    ]


# --- throwing it at a service ------------------------------------------------------------------


def hang_up(url: str) -> None:
    """A client that announces a 1 MB body, sends 10 bytes and goes away. No answer can reach
    it; the server must not count it as a failure of its own (/metrics, checked after)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        head = "POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        s.sendall(f"{head}Content-Length: 1000000\r\n\r\n".encode() + GOOD_JPEG[:10])
    time.sleep(0.5)  # the server notices the hang-up on its own time


def answers(metrics: str) -> dict[str, int]:
    """The service's own count of its answers, "route status" → count, from BentoML's /metrics
    (the public service's, whoever sent the requests)."""
    counts = {}
    pattern = r'bentoml_service_request_total\{endpoint="([^"]*)",http_response_code="(\d+)",'
    for line in metrics.splitlines():
        m = re.match(pattern + r'runner_name="Classifier".*\} ([0-9.e+]+)$', line)
        if m and float(m[3]) > 0:
            route = "".join(c if c.isprintable() else "?" for c in m[1])  # fuzzed paths too
            counts[f"{route} {m[2]}"] = int(float(m[3]))
    return counts


def health(http: httpx.Client) -> list[str]:
    """What is wrong with the service now: not ready, or no longer classifying."""
    problems = [f"GET {p}: HTTP {http.get(p).status_code}" for p in ("/readyz", "/livez")]
    problems = [p for p in problems if not p.endswith("HTTP 200")]
    if (problem := answered()(http.post("/classify", **one(GOOD_JPEG)))) is not None:
        problems.append(f"a good JPEG after the abuse: {problem}")
    return problems


def check(url: str) -> dict:
    """Send the corpus. Counts; `problems`: answers other than the expected one; `unhealthy`:
    what health() found after; `answers`: the service's own count of its answers by route and
    status since it started (a fuzzer's before included), and `server_5xx` the 5xx among them."""
    summary = {"requests": 0, "as_expected": 0, "4xx": 0, "5xx": 0, "problems": []}
    with httpx.Client(base_url=url, timeout=120) as http:
        for abuse in corpus(http.get("/model").json()["limits"]):
            r = http.request(abuse.method, abuse.path, **abuse.request)
            summary["requests"] += 1
            summary["4xx"] += 400 <= r.status_code < 500
            summary["5xx"] += r.status_code >= 500
            if (problem := abuse.expect(r)) is None:
                summary["as_expected"] += 1
            else:
                summary["problems"].append(f"{abuse.name}: {problem}")
        hang_up(url)
        summary["unhealthy"] = health(http)
        summary["answers"] = answers(http.get("/metrics").text)
    summary["server_5xx"] = {k: n for k, n in summary["answers"].items() if k.split()[-1] >= "5"}
    return summary


def passed(summary: dict) -> bool:
    return not (summary["problems"] or summary["unhealthy"] or summary["server_5xx"])


def markdown(summary: dict) -> str:
    """Two lines for BENCHMARKS.md (scripts/fuzz_http.sh)."""
    s = summary
    problems = s["problems"] + s["unhealthy"] + [f"{k}: {n}" for k, n in s["server_5xx"].items()]
    counts = ", ".join(f"{k}: {n}" for k, n in sorted(s["answers"].items()))
    return (
        f"- broken files and abusive requests (`python -m tests.abuse`): {s['requests']} requests, "
        f"{s['as_expected']} answered as expected ({s['4xx']} 4xx, {s['5xx']} 5xx), then a client "
        f"hanging up mid-body and a health check; problems: {'; '.join(problems) or 'none'}\n"
        f"- the service's own count of its answers (/metrics), fuzz and corpus: {counts}\n"
    )


def main(argv: list[str] | None = None) -> int:
    """python -m tests.abuse URL [MARKDOWN]: the summary as a JSON line, and for BENCHMARKS.md in
    MARKDOWN if given; exit 1 on any problem."""
    p = Parser(prog="python -m tests.abuse", description=main.__doc__.split(":")[0])
    p.add_argument("url", help="the running service, e.g. http://127.0.0.1:3000")
    p.add_argument(
        "markdown", nargs="?", type=Path, help="write the summary here for BENCHMARKS.md"
    )
    args = p.parse_args(argv)
    if not args.url.startswith(("http://", "https://")):
        p.error(f"the URL must start with http:// or https://, got {args.url!r}")
    summary = check(args.url.rstrip("/"))
    print(json.dumps(summary))
    if args.markdown:
        args.markdown.write_text(markdown(summary))
    return 0 if passed(summary) else 1


if __name__ == "__main__":
    sys.exit(main())

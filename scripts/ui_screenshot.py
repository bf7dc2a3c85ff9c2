"""A screenshot of the demo page (/ui) with one image classified, for the README (docs/ui.png).

    python scripts/ui_screenshot.py IMAGE [--model models/model.onnx] [--out docs/ui.png]

Starts `bentoml serve` on the model (from the repo root, as `make serve` does), opens /ui in
headless Chromium at 1280×900, uploads IMAGE, waits for the answer and its map, and writes the
whole page as a PNG. The picture is then what a user sees, drawn by the page itself, rather than
a mock-up that drifts from it. Needs the serve and dev extras (playwright) and a Chromium binary
($CHROMIUM, else `chromium` on the PATH; Playwright's own download is not needed).
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common.cli import Parser, fail

REPO = Path(__file__).resolve().parent.parent
# How Chromium is launched here, by this script and by tests/test_ui.py (which imports these):
# nothing here has a GPU or QUIC, and Chromium must not call Google's hosts. Playwright adds most
# of these itself; listed anyway so that the launch does not depend on its defaults.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(model: str, log: Path, timeout: float):
    """`bentoml serve` on `model` on a loopback port; yields its URL, stops it on the way out.
    BentoML's workers run in sessions of their own: they go with the SIGTERM to the arbiter."""
    import psutil  # a dependency of bentoml

    port = free_port()
    bentoml = Path(sys.executable).parent / "bentoml"
    command = [str(bentoml), "serve", "--port", str(port), "--host", "127.0.0.1"]
    env = {**os.environ, "TIN_MODEL": model}
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not ready(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"bentoml serve did not get ready:\n{tail}")
            time.sleep(0.3)
        yield url
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            arbiter = psutil.Process(proc.pid)
            family = [arbiter, *arbiter.children(recursive=True)]
            arbiter.send_signal(signal.SIGTERM)
            for p in psutil.wait_procs(family, timeout=20)[1]:  # a shutdown that hangs
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.kill()
        proc.wait()


def ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(url + "/readyz", timeout=2).status == 200
    except OSError:
        return False


def chromium_path(playwright) -> str | None:
    """$CHROMIUM, Debian's chromium on the PATH, or Playwright's own download if it was run."""
    candidates = [
        os.environ.get("CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        playwright.chromium.executable_path,  # `playwright install chromium`
    ]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def screenshot(url: str, image: Path, out: Path, width: int, height: int, browser: str) -> str:
    """Upload `image` to the page at `url` and save the page; returns the page's status line.
    ValueError: the page showed an error instead of a result."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=CHROMIUM_ARGS)
        try:
            page = b.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            page.goto(url + "/ui")
            page.wait_for_function(
                "() => document.getElementById('card').textContent.includes('·')"
            )
            mime = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
            files = [{"name": image.name, "mimeType": mime, "buffer": image.read_bytes()}]
            page.set_input_files("#file", files=files)
            page.wait_for_function(
                "() => document.getElementById('status').textContent.startsWith('Top prediction')"
                " || document.getElementById('error').textContent.length > 0"
            )
            error = page.inner_text("#error")
            if error:
                raise ValueError(error)
            page.evaluate("window.scrollTo(0, 0)")  # the page scrolls the result into view
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return page.inner_text("#status")
        finally:
            b.close()


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="the image to classify (any size)")
    parser.add_argument("--model", default="models/model.onnx", help="a model file or store tag")
    parser.add_argument("--out", type=Path, default=Path("docs/ui.png"), help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--timeout", type=float, default=120, help="seconds for the service")
    args = parser.parse_args(argv)
    if not args.image.is_file():
        return fail(f"no image file {args.image}")
    model = Path(args.model)
    if model.is_file():
        model = str(model.resolve())  # the service runs from the repo root
    elif ":" in args.model:  # a tag in the BentoML model store, e.g. tiny-imagenet-resnet:latest
        model = args.model
    else:
        return fail(f"no model file {args.model}")
    if not (320 <= args.width <= 4000 and 320 <= args.height <= 4000):
        return fail("--width and --height must be between 320 and 4000 pixels")
    if args.out.suffix.lower() != ".png":
        return fail(f"--out must be a .png file, got {args.out}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return fail("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        browser = chromium_path(p)
    if browser is None:
        return fail("no Chromium (apt-get install chromium, or set $CHROMIUM)")
    with (
        tempfile.TemporaryDirectory() as tmp,
        served(model, Path(tmp) / "serve.log", args.timeout) as url,
    ):
        try:
            status = screenshot(url, args.image, args.out, args.width, args.height, browser)
        except ValueError as e:  # the service refused the image: say why
            return fail(f"{args.image}: {e}")
    print(f"{status} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

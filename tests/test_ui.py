"""The demo page (serving/ui/index.html, GET /ui) in a real headless Chromium against a live
`bentoml serve` of the 4-class fixture model: what it shows must be what the API answers for the
same file.

Every browser test also checks, when its page closes (the `make_ui` fixture): no request left
the page's origin, no uncaught exception, no console error (bar the HTTP errors it provokes: for
those Chromium logs "Failed to load resource").

Needs playwright (the dev extra) and a Chromium binary ($CHROMIUM, else `chromium` on the PATH,
e.g. Debian's package, else Playwright's own download). Without them the browser tests skip, or
fail with REQUIRE_BROWSER=1 (CI sets it: a skipped browser test there would prove nothing).
Screenshots go to $UI_SCREENSHOT_DIR, else pytest's temporary folder: never into the repo.
"""

from __future__ import annotations

import importlib.util
import io
import os
import re
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.serving_fixtures import REPO, Server, encode, fixture_images, write_model


def _screenshot_script():
    """scripts/ui_screenshot.py (not a package): its Chromium launch is the one used here."""
    spec = importlib.util.spec_from_file_location(
        "ui_screenshot", REPO / "scripts/ui_screenshot.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SCRIPT = _screenshot_script()
CHROMIUM_ARGS, chromium_path = _SCRIPT.CHROMIUM_ARGS, _SCRIPT.chromium_path

PAGE = Path(__file__).resolve().parent.parent / "serving" / "ui" / "index.html"
KEY = "ui-test-key-5d1c"
LIMIT_MB = "0.05"  # 52,428 bytes: a 60 KB PNG is over it, every other test image under it
LIMIT = int(float(LIMIT_MB) * 1024 * 1024)
TIMEOUT_MS = 20_000  # a page action on 2 busy cores; a hung page still fails in seconds
DESKTOP = {"width": 1280, "height": 900}


# --- images --------------------------------------------------------------------------------------


def scene(w: int = 240, h: int = 160) -> Image.Image:
    """A landscape (sky, hills, a sun): an everyday photo's layout, not a fixture class's."""
    im = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(im)
    for y in range(h):
        t = y / h
        d.line([(0, y), (w, y)], fill=(int(40 + 60 * t), int(70 + 80 * t), int(150 + 60 * t)))
    d.polygon(
        [(0, h), (0, int(h * 0.7)), (w * 0.4, h * 0.6), (w, h * 0.75), (w, h)], fill=(30, 90, 40)
    )
    d.ellipse([w * 0.04, h * 0.04, w * 0.22, h * 0.24], fill=(255, 244, 200))
    return im


def upright_portrait() -> Image.Image:
    """64×128, dark with a bright top-right quarter: where it is tells the orientations apart."""
    im = Image.new("RGB", (64, 128), (20, 30, 60))
    im.paste((250, 240, 200), (32, 0, 64, 64))
    return im


def exif_rotated(upright: Image.Image) -> bytes:
    """`upright` stored turned 90° anticlockwise with EXIF orientation 6 ("turn 90° clockwise to
    display"): what a phone held upright writes."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def noise_png(side: int) -> bytes:
    """A real PNG that does not compress: about 3·side² bytes."""
    rng = np.random.default_rng(side)
    return encode(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "PNG")


# --- the service ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Two services on the fixture model, started and stopped side by side (about 9 s for both
    on 2 busy cores, against 15 s one after the other): `plain`, with no keys and an upload
    limit small enough to test with a 60 KB file, and `keys`, with an API key."""
    pytest.importorskip("onnx", reason="the fixture model is built with onnx")
    envs = {"plain": {"TIN_MAX_UPLOAD_MB": LIMIT_MB}, "keys": {"TIN_API_KEYS": KEY}}
    running = {}
    for name, env in envs.items():
        workdir = tmp_path_factory.mktemp(f"ui-{name}")
        running[name] = Server(write_model(workdir / "tiny.onnx", classes=4), workdir, env=env)
    with ThreadPoolExecutor(len(running)) as pool:
        starts = [pool.submit(s.start) for s in running.values()]
        wait(starts)  # both settled before any stop(): it must not race a start under way
        try:
            for started in starts:
                started.result()
            yield running
        finally:
            for stopped in [pool.submit(s.stop) for s in running.values()]:
                stopped.result()


@pytest.fixture(scope="module")
def server(servers):
    return servers["plain"]


@pytest.fixture(scope="module")
def key_server(servers):
    return servers["keys"]


def api(server, path: str, data: bytes, key: str | None = None, **params) -> httpx.Response:
    """The API's answer for these bytes, sent as a multipart upload (the page sends a raw body:
    the two must agree)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(
        server.url + path,
        params=params,
        files={"image": ("upload", data)},
        headers=headers,
        timeout=30,
    )


def explained(server, data: bytes, key: str | None = None) -> dict:
    r = api(server, "/explain", data, key, top_k=5, format="json")
    assert r.status_code == 200, r.text
    return r.json()


def sentence(s: str) -> str:
    """The page's rendering of a service message (index.html `sentence`)."""
    s = s.strip()
    return s[:1].upper() + s[1:] + ("" if s.endswith((".", "!", "?")) else ".")


def levels(cam) -> np.ndarray:
    """A map as the page colours it: scaled from its minimum (0) to its maximum (255)."""
    cam = np.asarray(cam, dtype=np.float64)
    return np.round(255 * (cam - cam.min()) / (cam.max() - cam.min()))


# --- the browser ---------------------------------------------------------------------------------


def unavailable(reason: str):
    if os.environ.get("REQUIRE_BROWSER") == "1":
        pytest.fail(f"REQUIRE_BROWSER=1, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as p:
        path = chromium_path(p)
        if path is None:
            unavailable("no Chromium (apt-get install chromium, or set $CHROMIUM)")
        try:
            b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        except Error as e:
            unavailable(f"Chromium at {path} does not start: {str(e)[:500]}")
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("UI_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


# The overlay canvas read back through the page's own colour scale (the legend): its map level
# (0-255) at the centre of each map cell, where bilinear upsampling gives the cell's own value.
READ_OVERLAY = """([rows, cols]) => {
  const c = document.getElementById('overlay');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const l = document.getElementById('legend');
  const scale = l.getContext('2d').getImageData(0, 0, l.width, 1).data;
  const level = (k) => {
    let best = 0, far = Infinity;
    for (let t = 0; t < l.width; t++) {
      const e = (scale[4 * t] - d[k]) ** 2 + (scale[4 * t + 1] - d[k + 1]) ** 2
        + (scale[4 * t + 2] - d[k + 2]) ** 2;
      if (e < far) { far = e; best = t; }
    }
    return best;
  };
  const grid = [];
  for (let j = 0; j < rows; j++) {
    const y = Math.floor((j + 0.5) * c.height / rows), row = [];
    for (let i = 0; i < cols; i++) {
      row.push(level(4 * (y * c.width + Math.floor((i + 0.5) * c.width / cols))));
    }
    grid.push(row);
  }
  let hash = 2166136261;
  for (let i = 0; i < d.length; i += 4) {
    hash = Math.imul(hash ^ d[i] ^ (d[i + 1] << 8) ^ (d[i + 2] << 16), 16777619) >>> 0;
  }
  const img = document.getElementById('photo'), box = c.getBoundingClientRect();
  return {grid, hash, w: c.width, h: c.height, imgW: img.clientWidth, imgH: img.clientHeight,
          dpr: devicePixelRatio, visible: !c.hidden && box.width > 0 && box.height > 0};
}"""


class UI:
    """One page in a fresh browser context, with everything it did recorded."""

    def __init__(self, browser, base: str, **context_options):
        self.base = base
        self.context = browser.new_context(**context_options)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.requests: list = []
        self.console_errors: list[str] = []
        self.page_errors: list[str] = []
        self.allowed_statuses: set[int] = set()  # HTTP errors the test provokes on purpose
        self.context.on("request", lambda r: self.requests.append(r))
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        self.page.on("pageerror", lambda e: self.page_errors.append(str(e)))

    def open(self) -> UI:
        self.page.goto(f"{self.base}/ui")
        return self

    def wait_card(self) -> str:
        self.page.wait_for_function(
            "() => document.getElementById('card').textContent.includes('val top-1')"
        )
        return self.page.inner_text("#card")

    def upload(self, name: str, data: bytes, mime: str) -> None:
        self.page.set_input_files("#file", files=[{"name": name, "mimeType": mime, "buffer": data}])

    def wait_status(self, text: str) -> None:
        self.page.wait_for_function(
            "t => document.getElementById('status').textContent === t", arg=text
        )

    def wait_error(self, part: str = "") -> str:
        self.page.wait_for_function(
            "p => { const t = document.getElementById('error').textContent;"
            " return t.length > 0 && t.includes(p); }",
            arg=part,
        )
        return self.page.inner_text("#error")

    def expect_result(self, answer: dict) -> None:
        """The page shows this answer: its top-1 in the status line, its classes in order."""
        top = answer["predictions"][0]
        self.wait_status(f"Top prediction: {top['label']}, {100 * top['probability']:.1f}%.")
        shown = self.page.eval_on_selector_all(
            "#preds button",
            "bs => bs.map(b => [b.querySelector('.name').textContent,"
            " b.querySelector('.pct').textContent])",
        )
        assert shown == [
            [p["label"], f"{100 * p['probability']:.1f}%"] for p in answer["predictions"]
        ]

    def overlay(self, map_size=(8, 8)) -> dict:
        return self.page.evaluate(READ_OVERLAY, list(map_size))

    def posts(self) -> list[str]:
        return [r.url.removeprefix(self.base) for r in self.requests if r.method == "POST"]

    def check(self) -> None:
        foreign = [
            r.url
            for r in self.requests
            if not r.url.startswith((self.base + "/", f"blob:{self.base}/", "data:"))
        ]
        assert not foreign, f"requests left the page's origin: {foreign}"
        assert not self.page_errors, f"uncaught errors: {self.page_errors}"
        allowed = re.compile(
            r"Failed to load resource: the server responded with a status of (\d+)"
        )
        errors = [
            t
            for t in self.console_errors
            if not ((m := allowed.match(t)) and int(m.group(1)) in self.allowed_statuses)
        ]
        assert not errors, f"console errors: {errors}"


@pytest.fixture
def make_ui(browser):
    opened: list[UI] = []

    def make(server, **context_options) -> UI:
        context_options.setdefault("viewport", DESKTOP)
        ui = UI(browser, server.url, **context_options)
        opened.append(ui)
        return ui

    yield make
    try:
        for ui in opened:
            ui.check()
    finally:
        for ui in opened:
            ui.context.close()


def assert_map(overlay: dict, cam, tolerance: int = 6) -> None:
    """The overlay shows `cam` (0-255 levels; a few levels of colour quantisation allowed)."""
    expected = levels(cam)
    got = np.array(overlay["grid"])
    assert np.abs(got - expected).max() <= tolerance, f"overlay\n{got}\nAPI map\n{expected}"


# --- the page file and its headers ---------------------------------------------------------------


def test_page_is_one_small_self_contained_file(server):
    """One file that works offline and behind any proxy: no external resource, and a policy
    that would block one anyway."""
    html = PAGE.read_text(encoding="utf-8")
    assert len(html.encode()) < 100_000
    assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I), "an absolute URL"
    assert not re.search(r"<(script|link|img|iframe)\b[^>]*\b(src|href)=\"(?!data:,)", html)
    assert html.count("<script>") == html.count("<style>") == 1
    assert "@import" not in html
    assert "url(" not in html
    r = httpx.get(server.url + "/ui")
    assert r.status_code == 200
    assert r.text == html
    csp = r.headers["content-security-policy"]
    assert "'unsafe-inline'" not in csp
    assert "connect-src 'self'" in csp
    assert "default-src 'none'" in csp


# --- the browser tests ---------------------------------------------------------------------------


def test_uploads_show_the_api_answer_and_its_maps(make_ui, server, shots):
    """Real files (the fixture's JPEGs, a Pillow PNG and JPEG): the page's top-1 and classes are
    the API's for the same bytes, and its overlay is the API's map of the selected class."""
    files = [(f"fixture-{i}.jpg", d, "image/jpeg") for i, d in enumerate(fixture_images(4))]
    files.append(("scene.png", encode(scene(), "PNG"), "image/png"))
    files.append(("scene.jpg", encode(scene(200, 150), "JPEG"), "image/jpeg"))
    ui = make_ui(server).open()
    card = "tiny · 4 classes · val top-1 50.0%, top-5 90.0% on 16 images · fp32 on ONNX Runtime"
    assert ui.wait_card() == card
    page = ui.page
    tops = set()
    for name, data, mime in files:
        classify = api(server, "/classify", data, top_k=5).json()
        answer = explained(server, data)
        assert [p["wnid"] for p in answer["predictions"]] == [
            p["wnid"] for p in classify["predictions"]
        ], "/explain and /classify disagree"
        ui.upload(name, data, mime)
        ui.expect_result(classify)
        tops.add(classify["predictions"][0]["wnid"])
        assert page.get_attribute("#preds button >> nth=0", "aria-pressed") == "true"
        top = ui.overlay(answer["map_size"])
        assert top["visible"]
        assert (top["w"], top["h"]) == (top["imgW"], top["imgH"]), "not the image's size"
        assert len({v for row in top["grid"] for v in row}) > 8, "the overlay is (nearly) uniform"
        assert_map(top, answer["predictions"][0]["cam"])
    assert len(tops) > 1, "every image got the same class: the test cannot tell them apart"
    assert ui.posts() == ["/explain?top_k=5&format=json"] * len(files)

    page.click("#preds button >> nth=1")  # another class: its map, without a new request
    second = ui.overlay()
    assert second["hash"] != top["hash"]
    assert_map(second, answer["predictions"][1]["cam"])
    assert page.get_attribute("#preds button >> nth=1", "aria-pressed") == "true"
    assert page.get_attribute("#preds button >> nth=0", "aria-pressed") == "false"
    assert "strongest at the" in page.get_attribute("#overlay", "aria-label")
    assert len(ui.posts()) == len(files)

    page.click("#show-cam")  # the toggle: the map, its caption and its legend together
    assert page.is_hidden("#overlay")
    assert page.is_hidden("#cam-caption")
    assert page.is_hidden("#legend-box")
    page.click("#show-cam")
    assert page.is_visible("#overlay")
    assert page.is_visible("#cam-caption")
    assert page.is_visible("#legend-box")
    assert ui.overlay()["hash"] == second["hash"]
    page.click("#preds button >> nth=0")
    assert ui.overlay()["hash"] == top["hash"]
    page.screenshot(path=str(shots / "ui-1280.png"), full_page=True)


def test_exif_orientation(make_ui, server):
    """A phone photo stored sideways: the browser shows it upright, the service classifies it
    upright, so the map drawn over the displayed image is the service's map as it comes."""
    upright = upright_portrait()
    data = exif_rotated(upright)
    answer = explained(server, data)
    reference = explained(server, encode(upright, "JPEG", quality=95))
    for p, q in zip(answer["predictions"], reference["predictions"], strict=True):
        assert p["wnid"] == q["wnid"]
        assert np.abs(levels(p["cam"]) - levels(q["cam"])).max() <= 12, "the service ignores EXIF"
    ui = make_ui(server).open()
    ui.upload("phone.jpg", data, "image/jpeg")
    ui.expect_result(answer)
    o = ui.overlay()
    assert o["imgH"] > 1.9 * o["imgW"], "the browser did not apply the EXIF orientation"
    assert (o["w"], o["h"]) == (o["imgW"], o["imgH"])
    assert_map(o, answer["predictions"][0]["cam"])

    ui.page.click("#show-cam")  # the photo alone: bright at its top right, as displayed
    shot = Image.open(io.BytesIO(ui.page.locator("#photo").screenshot())).convert("L")
    w, h = shot.size
    bright = np.asarray(shot, dtype=float)
    assert bright[: h // 2, w // 2 :].mean() > 180, "not upright: the bright quarter is elsewhere"
    assert bright[h // 2 :, :].mean() < 80


def test_a_text_file_shows_the_service_message(make_ui, server):
    data = b"these are not the pixels you are looking for\n"
    r = api(server, "/explain", data, top_k=5, format="json")
    assert r.status_code == 400
    ui = make_ui(server).open()
    ui.allowed_statuses = {400}
    ui.wait_card()
    ui.upload("notes.txt", data, "text/plain")
    expected = f"Could not classify “notes.txt”: {sentence(r.json()['error']['message'])}"
    assert ui.wait_error() == expected  # which file, and what the service said of it
    assert ui.page.is_hidden("#result")
    assert ui.page.inner_text("#status") == ""


def test_a_too_large_file_is_refused_before_upload(make_ui, server):
    data = noise_png(144)
    assert LIMIT < len(data) < 2 * LIMIT
    r = api(server, "/classify", data)  # the page's limit is the service's
    assert r.status_code == 413, r.text
    ui = make_ui(server).open()
    ui.wait_card()
    assert ui.page.inner_text("#limits").endswith(f"up to {round(LIMIT / 1024)} KB.")
    ui.upload("big.png", data, "image/png")
    text = ui.wait_error()
    assert text.startswith(f"“big.png” is {round(len(data) / 1024)} KB;"), text
    assert f"({LIMIT:,} bytes)" in text, text
    assert not ui.posts(), "the file was sent anyway"


def test_the_service_413_message_is_shown(make_ui, server):
    """A page that believes a larger limit (an old card, a proxy's): the service's own refusal
    reaches the user as its message."""
    ui = make_ui(server)
    ui.allowed_statuses = {413}

    def larger_limit(route):
        card = route.fetch().json()
        card["limits"]["max_upload_bytes"] = 10 << 20
        route.fulfill(json=card)

    ui.page.route("**/model", larger_limit)
    ui.open().wait_card()
    ui.upload("big.png", noise_png(144), "image/png")
    said = f"Could not classify “big.png”: The request body is over the limit of {LIMIT:,} bytes."
    assert ui.wait_error() == said
    assert ui.posts() == ["/explain?top_k=5&format=json"]


def test_the_card_describes_the_form_that_answers(make_ui, server):
    """An INT8 form (OpenVINO's, the shipped model's default on a CPU) answers with its own
    accuracy: the card shows that one and its precision, not the fp32 export's."""
    ui = make_ui(server)

    def int8(route):
        card = route.fetch().json()
        parity = {"reference": "fp32", "images": 5000, "val_top1": 0.6484, "val_top5": 0.8616}
        card["backend"].update(engine="openvino", precision="int8", parity=parity)
        route.fulfill(json=card)

    ui.page.route("**/model", int8)
    shown = ui.open().wait_card()
    assert shown.endswith("val top-1 64.8%, top-5 86.2% on 5,000 images · int8 on OpenVINO")


def test_api_key(make_ui, key_server):
    data = fixture_images(1, fmt="PNG")[0]
    answer = explained(key_server, data, KEY)
    assert api(key_server, "/explain", data).status_code == 401
    ui = make_ui(key_server).open()
    ui.allowed_statuses = {401}
    page = ui.page
    page.wait_for_selector("#auth", state="visible")
    assert page.evaluate("document.activeElement.id") == "key"
    assert ui.wait_error() == "This service needs an API key: enter it below."
    assert page.inner_text("#card") == "Enter the API key to see the model's details."

    page.fill("#key", "wrong-key")
    page.keyboard.press("Enter")
    assert ui.wait_error("not valid") == "The API key is not valid."
    assert page.is_visible("#auth")

    with page.expect_response("**/explain?*") as refused:  # still the wrong key: kept for later
        ui.upload("early.png", data, "image/png")
    assert refused.value.status == 401
    assert refused.value.headers["www-authenticate"].startswith("Bearer")
    ui.wait_status("")  # the page has taken the refusal in, and kept the image

    page.fill("#key", KEY)
    page.click("#auth button")
    ui.expect_result(answer)  # the upload made before the key
    assert page.is_hidden("#auth")
    assert ui.page.inner_text("#error") == ""
    assert "val top-1" in page.inner_text("#card")
    last = [r for r in ui.requests if r.url.startswith(key_server.url + "/")][-2:]
    assert [r.all_headers().get("authorization") for r in last] == [f"Bearer {KEY}"] * 2
    assert_map(ui.overlay(), answer["predictions"][0]["cam"])


def test_keyboard_only(make_ui, server):
    data = encode(scene(200, 150), "PNG")
    answer = explained(server, data)
    ui = make_ui(server)
    # Playwright turns file-chooser interception on without waiting for it: a listener added
    # only by expect_file_chooser can lose the race with the key press on a busy machine, and
    # headless Chromium then cancels the dialog. So: on before the page loads.
    ui.page.on("filechooser", lambda chooser: None)
    ui.open().wait_card()
    page = ui.page
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "pick"
    style = page.evaluate(
        "() => (s => [s.outlineStyle, parseFloat(s.outlineWidth)])"
        "(getComputedStyle(document.activeElement))"
    )
    assert style[0] != "none", f"no visible focus: {style}"
    assert style[1] >= 2, f"no visible focus: {style}"
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(files=[{"name": "k.png", "mimeType": "image/png", "buffer": data}])
    ui.expect_result(answer)
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "show-cam"
    page.keyboard.press("Space")
    assert page.is_hidden("#overlay")
    page.keyboard.press("Space")
    assert page.is_visible("#overlay")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.index") == "0"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    before = ui.overlay()["hash"]
    page.keyboard.press("Enter")
    assert page.get_attribute("#preds button >> nth=1", "aria-pressed") == "true"
    assert ui.overlay()["hash"] != before
    page.keyboard.press("Tab")
    page.keyboard.press(" ")
    assert page.get_attribute("#preds button >> nth=2", "aria-pressed") == "true"
    assert_map(ui.overlay(), answer["predictions"][2]["cam"])
    assert page.get_attribute("#status", "role") == "status"
    assert page.get_attribute("#error", "role") == "alert"


def test_phone_width(make_ui, server, shots):
    data = encode(scene(480, 320), "JPEG")
    answer = explained(server, data)
    ui = make_ui(
        server,
        viewport={"width": 375, "height": 740},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    ).open()
    ui.wait_card()
    assert ui.page.inner_text("#drop-hint") == "Take a photo or choose one:"  # no drop, no paste
    ui.upload("phone.jpg", data, "image/jpeg")
    ui.expect_result(answer)
    page = ui.page
    assert page.evaluate("document.documentElement.scrollWidth") <= 375, "horizontal scrolling"
    stage = page.locator(".stage").bounding_box()
    preds = page.locator("#preds").bounding_box()
    assert preds["y"] >= stage["y"] + stage["height"], "not one column"
    assert stage["width"] <= 375 - 2 * 16
    o = ui.overlay()
    assert o["dpr"] == 2
    assert (o["w"], o["h"]) == (2 * o["imgW"], 2 * o["imgH"]), "not drawn at device pixels"
    assert_map(o, answer["predictions"][0]["cam"])
    page.screenshot(path=str(shots / "ui-375.png"), full_page=True)


def test_drag_and_drop(make_ui, server):
    data = fixture_images(2)[1]
    answer = explained(server, data)
    ui = make_ui(server).open()
    ui.wait_card()
    transfer = ui.page.evaluate_handle(
        """bytes => {
          const dt = new DataTransfer();
          dt.items.add(new File([new Uint8Array(bytes)], 'dropped.jpg', {type: 'image/jpeg'}));
          return dt;
        }""",
        list(data),
    )
    ui.page.dispatch_event("#drop", "dragenter", {"dataTransfer": transfer})
    assert "over" in ui.page.get_attribute("#drop", "class")
    ui.page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    ui.expect_result(answer)
    assert "over" not in ui.page.get_attribute("#drop", "class")


def test_a_missing_map_is_fetched_for_that_class(make_ui, server):
    """A service may send maps for fewer classes than it lists: the page asks `class=WNID`,
    which this service answers with that class's map."""
    data = fixture_images(3)[2]
    answer = explained(server, data)
    ui = make_ui(server)

    def strip_maps(route):
        body = route.fetch().json()
        for p in body["predictions"][1:]:
            del p["cam"]
        route.fulfill(json=body)

    ui.page.route("**/explain?top_k=*", strip_maps)
    ui.open()
    ui.upload("a.jpg", data, "image/jpeg")
    ui.expect_result(answer)
    ui.page.click("#preds button >> nth=1")
    ui.page.wait_for_function("() => document.getElementById('status').textContent === ''")
    wnid = answer["predictions"][1]["wnid"]
    assert ui.posts()[-1] == f"/explain?class={wnid}&format=json"
    assert_map(ui.overlay(), answer["predictions"][1]["cam"])


def test_an_unsure_answer_is_said_in_words(make_ui, server):
    """A calibrated model's card gives the threshold for 80% top-1: the page asks the service to
    judge its answer by it, and says "Not sure" when the top-1 is below it."""
    ui = make_ui(server)

    def calibrated(route):
        card = route.fetch().json()
        card["calibration"] = {
            "method": "temperature",
            "temperature": 0.73,
            "before": {"ece": 0.191},
            "after": {"ece": 0.0219},
            "selective": [
                {"top1": 0.8, "min_confidence": 0.99, "coverage": 0.1},
                {"top1": 0.9, "min_confidence": None, "coverage": 0.0},
            ],
        }
        route.fulfill(json=card)

    ui.page.route("**/model", calibrated)
    assert ui.open().wait_card().endswith("calibrated probabilities (ECE 2.2%)")
    data = fixture_images(1)[0]
    answer = api(server, "/explain", data, top_k=5, format="json", min_confidence=0.99).json()
    assert answer["confident"] is False  # the fixture model is never 99% sure
    top = answer["predictions"][0]
    ui.upload("fixture.jpg", data, "image/jpeg")
    ui.wait_status(f"Not sure. Best guess: {top['label']}, {100 * top['probability']:.1f}%.")
    assert ui.page.is_visible("#unsure")
    assert "below the 99.0% this page trusts" in ui.page.text_content("#unsure")
    assert ui.posts() == ["/explain?top_k=5&format=json&min_confidence=0.99"]

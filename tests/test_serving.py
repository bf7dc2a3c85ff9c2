"""The BentoML service: every endpoint and every bad input in-process through its ASGI app, the
preprocessing against the training data layer, and one run of the real `bentoml serve`."""

import asyncio
import math
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from starlette.requests import Request

from inference.backend import ModelFileError, open_backend, read_card
from inference.preprocess import (
    SMALL_PIXELS,
    ImageError,
    decode,
    is_small,
    open_reduced,
    open_rgb,
)
from serving import config, routes
from serving.routes import json_errors
from tests.abuse import BAD_FILES, GOOD_JPEG, GOOD_PNG
from tests.serving_fixtures import (
    Server,
    build_model,
    encode,
    fixture_array,
    fixture_card,
    fixture_images,
    reference_probabilities,
    write_model,
)
from training.data import decode_image

REPO = Path(__file__).resolve().parent.parent
CLASSES = 4
LIMITS = {"TIN_MAX_UPLOAD_MB": "1", "TIN_MAX_BATCH_IMAGES": "8", "TIN_MAX_PIXELS": "1000000"}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("models") / "tiny.onnx", classes=CLASSES)


# Every test of the service runs against each engine it can serve the fixture with (the fixture
# has no INT8 forms; tests/test_export.py runs those through both engines).
BACKENDS = [("onnxruntime", "fp32"), ("openvino", "fp32")]


@pytest.fixture(scope="module", params=BACKENDS, ids=[e for e, _ in BACKENDS])
def client(request, model_path, tmp_path_factory):
    """The service in-process through its ASGI app, started (model warmed) once per module and
    engine; `client.engine` says which."""
    from starlette.testclient import TestClient

    from serving.service import Classifier

    engine, precision = request.param
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIN_MODEL", str(model_path))
        mp.setenv("TIN_BACKEND", engine)
        mp.setenv("TIN_PRECISION", precision)
        for k, v in LIMITS.items():
            mp.setenv(k, v)
        # BentoML's /metrics reads the prometheus multiprocess folder `bentoml serve` makes.
        mp.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path_factory.mktemp("prometheus")))
        if request.param != BACKENDS[0]:
            # BentoML registers its metrics in a process-wide registry when an app starts: a
            # second app in this process would fail on duplicates.
            mp.setenv("BENTOML_CONFIG_OPTIONS", "services.Classifier.metrics.enabled=false")
        with TestClient(Classifier.to_asgi()) as c:
            c.engine = engine
            c.metrics = request.param == BACKENDS[0]
            yield c


def expected_top1(data: bytes) -> int:
    return int(reference_probabilities(decode(data)[None], CLASSES)[0].argmax())


def classify(client, data: bytes, top_k=None, content_type="image/jpeg"):
    form = {} if top_k is None else {"top_k": str(top_k)}
    return client.post("/classify", files={"image": ("x", data, content_type)}, data=form)


def assert_error(response, status: int, code: str):
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


# --- bad files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_classify_refuses_bad_files_with_400(client, name):
    data, code = BAD_FILES[name]
    assert_error(classify(client, data), 400, code)


@pytest.mark.parametrize("name", ["empty", "truncated JPEG", "TIFF", "decompression bomb"])
def test_classify_refuses_bad_raw_bodies_with_400(client, name):
    data, code = BAD_FILES[name]
    r = client.post("/classify", content=data, headers={"content-type": "image/jpeg"})
    assert_error(r, 400, code)


# --- /classify ---------------------------------------------------------------------------------


def test_classify_returns_top_k_with_labels(client):
    card = fixture_card(CLASSES)
    r = classify(client, GOOD_JPEG, top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny"
    preds = body["predictions"]
    assert [p["rank"] for p in preds] == [1, 2, 3]
    assert set(preds[0]) == {"rank", "wnid", "label", "probability"}
    probs = [p["probability"] for p in preds]
    assert probs == sorted(probs, reverse=True)
    assert 0 < sum(probs) <= 1.0001
    top = card.wnids.index(preds[0]["wnid"])
    assert top == expected_top1(GOOD_JPEG)
    assert preds[0]["label"] == card.names[top]
    expected = reference_probabilities(decode(GOOD_JPEG)[None], CLASSES)[0][top]
    assert preds[0]["probability"] == pytest.approx(float(expected), abs=1e-5)


def test_default_top_k_is_5_and_capped_by_the_class_count(client):
    assert len(classify(client, GOOD_JPEG).json()["predictions"]) == CLASSES  # 5 > 4 classes
    assert len(classify(client, GOOD_JPEG, top_k=200).json()["predictions"]) == CLASSES
    assert len(classify(client, GOOD_JPEG, top_k=1).json()["predictions"]) == 1


def test_raw_image_body_with_top_k_in_the_query(client):
    r = client.post("/classify?top_k=2", content=GOOD_PNG, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert len(r.json()["predictions"]) == 2
    assert r.json()["predictions"] == classify(client, GOOD_PNG, 2).json()["predictions"]


def test_declared_content_type_is_ignored_for_a_good_jpeg(client):
    # The format comes from the bytes: a JPEG labelled image/png (or anything) is still read.
    right = classify(client, GOOD_JPEG).json()
    assert classify(client, GOOD_JPEG, content_type="image/png").json() == right
    assert classify(client, GOOD_JPEG, content_type="text/plain").json() == right
    raw = client.post("/classify", content=GOOD_JPEG, headers={"content-type": "image/png"})
    assert raw.json() == right


# Blank, padded, "1_0" and other scripts' digits pass int() but are not integers here.
@pytest.mark.parametrize(
    "top_k", ["0", "201", "-1", "abc", "1.5", "", " 5", "1_0", "٣", "9" * 5000]
)
def test_top_k_out_of_range_or_not_an_integer(client, top_k):
    assert_error(classify(client, GOOD_JPEG, top_k), 400, "bad_top_k")
    files = [("images", ("a", GOOD_JPEG, "image/jpeg"))]
    r = client.post("/classify_batch", files=files, data={"top_k": top_k})
    assert_error(r, 400, "bad_top_k")
    r = client.post(
        f"/classify?top_k={top_k}", content=GOOD_JPEG, headers={"content-type": "image/jpeg"}
    )
    assert_error(r, 400, "bad_top_k")


def test_a_bad_top_k_in_the_query_is_refused_even_with_a_good_one_in_the_form(client):
    r = client.post("/classify?top_k=0", files={"image": ("x", GOOD_JPEG)}, data={"top_k": "2"})
    assert_error(r, 400, "bad_top_k")
    r = client.post("/classify?top_k=3", files={"image": ("x", GOOD_JPEG)}, data={"top_k": "2"})
    assert len(r.json()["predictions"]) == 2  # the form's


def test_upload_over_the_limit_is_413(client):
    big = GOOD_JPEG + b"\x00" * (1024 * 1024)  # TIN_MAX_UPLOAD_MB=1 here
    assert_error(classify(client, big), 413, "upload_too_large")
    r = client.post("/classify", content=big, headers={"content-type": "image/jpeg"})
    assert_error(r, 413, "upload_too_large")
    files = [("images", ("a", GOOD_JPEG, "image/jpeg"))] * 2 + [("images", ("b", big, "x"))]
    assert_error(client.post("/classify_batch", files=files), 413, "upload_too_large")


def test_upload_without_content_length_is_cut_off_at_the_limit(client):
    def chunks():  # httpx sends a generator chunked, with no Content-Length to trust
        yield GOOD_JPEG
        for _ in range(40):
            yield b"\x00" * 65536

    r = client.post("/classify", content=chunks(), headers={"content-type": "image/jpeg"})
    assert_error(r, 413, "upload_too_large")


def test_request_level_problems_of_classify(client):
    assert_error(client.post("/classify", data={"top_k": "3"}), 400, "missing_image")
    r = client.post("/classify", data={"image": "not a file"})
    assert_error(r, 400, "missing_image")
    r = client.post("/classify", json={"image": "aGVsbG8="})
    assert_error(r, 415, "unsupported_media_type")
    r = client.post(
        "/classify",
        content=b"--x\r\nbroken",
        headers={"content-type": "multipart/form-data"},  # no boundary
    )
    assert_error(r, 400, "bad_multipart")
    two = [("image", ("a", GOOD_JPEG, "image/jpeg"))] * 2
    assert_error(client.post("/classify", files=two), 400, "too_many_images")


# --- /classify_batch ---------------------------------------------------------------------------


def test_batch_keeps_order_and_reports_bad_images_per_item(client):
    images = fixture_images(4)
    bad = BAD_FILES["truncated JPEG"][0]
    sent = [images[0], bad, images[1], b"", images[2], images[3]]
    files = [("images", (f"{i}.jpg", d, "image/jpeg")) for i, d in enumerate(sent)]
    r = client.post("/classify_batch", files=files, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny"
    results = body["results"]
    assert [x["index"] for x in results] == list(range(len(sent)))
    assert results[1] == {
        "index": 1,
        "error": {"code": "truncated_image", "message": results[1]["error"]["message"]},
    }
    assert results[3]["error"]["code"] == "empty_image"
    for i in (0, 2, 4, 5):
        assert len(results[i]["predictions"]) == 2
        single = classify(client, sent[i], top_k=2).json()["predictions"]
        assert results[i]["predictions"] == single


def test_batch_of_only_bad_images_is_still_answered_per_item(client):
    files = [("images", ("a", b"", "image/jpeg")), ("images", ("b", b"xx", "image/jpeg"))]
    r = client.post("/classify_batch", files=files)
    assert r.status_code == 200, r.text
    assert [x["error"]["code"] for x in r.json()["results"]] == ["empty_image", "not_an_image"]


def test_batch_request_level_problems(client):
    nine = [("images", (f"{i}", GOOD_JPEG, "image/jpeg")) for i in range(9)]  # limit is 8 here
    assert_error(client.post("/classify_batch", files=nine), 400, "too_many_images")
    assert client.post("/classify_batch", files=nine[:8]).status_code == 200
    r = client.post("/classify_batch", files=[("image", ("a", GOOD_JPEG, "image/jpeg"))])
    assert_error(r, 400, "missing_images")
    r = client.post("/classify_batch", content=GOOD_JPEG, headers={"content-type": "image/jpeg"})
    assert_error(r, 415, "unsupported_media_type")


# --- min_confidence: an honest "not sure" -----------------------------------------------------


def top_probability(client, data: bytes) -> float:
    return classify(client, data).json()["predictions"][0]["probability"]


def test_min_confidence_judges_the_answer_and_never_refuses_it(client):
    p = top_probability(client, GOOD_JPEG)
    assert 0.25 < p < 1  # 4 classes: a threshold on either side of it exists
    unjudged = classify(client, GOOD_JPEG).json()
    assert (unjudged["min_confidence"], unjudged["confident"]) == (None, None)
    # p is rounded to 6 places in the answer: 1e-6 under it is under the real one too
    for least, sure in ((p / 2, True), (p - 1e-6, True), (p + 1e-6, False)):
        form = {"min_confidence": repr(least)}
        r = client.post("/classify", files={"image": ("x", GOOD_JPEG)}, data=form)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["min_confidence"], body["confident"]) == (pytest.approx(least), sure)
        assert body["predictions"] == unjudged["predictions"]  # still the top k
    raw = client.post(
        "/classify",
        content=GOOD_JPEG,
        params={"min_confidence": "1"},
        headers={"content-type": "image/jpeg"},
    )
    assert raw.json()["confident"] is False


def test_min_confidence_per_image_in_a_batch_and_on_explain(client):
    images = fixture_images(4)
    tops = [top_probability(client, d) for d in images]
    least = sorted(tops)[1] + 1e-4  # the two least confident images fall below it
    files = [("images", (f"{i}.jpg", d)) for i, d in enumerate([*images, b""])]
    body = client.post("/classify_batch", files=files, data={"min_confidence": repr(least)}).json()
    assert body["min_confidence"] == pytest.approx(least)
    assert [r.get("confident") for r in body["results"]] == [t >= least for t in tops] + [None]
    explained = client.post(
        "/explain_batch", files=files, params={"min_confidence": repr(least)}
    ).json()
    assert [r.get("confident") for r in explained["results"]] == [t >= least for t in tops] + [None]
    one = client.post("/explain", files={"image": ("x", images[0])}, data={"min_confidence": "0"})
    assert one.json()["confident"] is True


@pytest.mark.parametrize("bad", ["1.5", "-0.1", "nan", "inf", "abc", "", "0x1", "½", "1e5"])
def test_a_bad_min_confidence_is_a_400_that_names_it(client, bad):
    r = client.post("/classify", files={"image": ("x", GOOD_JPEG)}, data={"min_confidence": bad})
    assert_error(r, 400, "bad_min_confidence")
    assert "between 0 and 1" in r.json()["error"]["message"]
    r = client.post("/classify_batch", files=[("images", ("x", GOOD_JPEG))],
                    params={"min_confidence": bad})  # fmt: skip
    assert_error(r, 400, "bad_min_confidence")


def test_the_service_default_applies_unless_a_request_asks_otherwise(client):
    from dataclasses import replace

    from serving.routes import app

    svc = app.state.service
    before = svc.settings
    svc.settings = replace(before, min_confidence=1.0)  # as TIN_MIN_CONFIDENCE=1 would
    try:
        body = classify(client, GOOD_JPEG).json()
        assert (body["min_confidence"], body["confident"]) == (1.0, False)
        r = client.post(
            "/classify", files={"image": ("x", GOOD_JPEG)}, data={"min_confidence": "0"}
        )
        assert r.json()["confident"] is True
        assert client.get("/model").json()["min_confidence"] == 1.0
    finally:
        svc.settings = before


def test_min_confidence_from_the_environment(monkeypatch):
    monkeypatch.delenv("TIN_MIN_CONFIDENCE", raising=False)
    assert config.settings().min_confidence is None
    monkeypatch.setenv("TIN_MIN_CONFIDENCE", "0.49")
    assert config.settings().min_confidence == 0.49
    for bad in ("1.2", "-1", "half"):
        monkeypatch.setenv("TIN_MIN_CONFIDENCE", bad)
        with pytest.raises(config.ConfigError, match="TIN_MIN_CONFIDENCE"):
            config.settings()


# --- GET routes and BentoML's own --------------------------------------------------------------


def test_labels(client):
    card = fixture_card(CLASSES)
    labels = client.get("/labels").json()["labels"]
    assert labels == [
        {"index": i, "wnid": w, "label": n}
        for i, (w, n) in enumerate(zip(card.wnids, card.names, strict=True))
    ]


def test_model_describes_card_backend_and_limits(client):
    card = fixture_card(CLASSES)
    m = client.get("/model").json()
    assert m["name"] == "tiny"
    assert (m["preset"], m["precision"], m["classes"]) == ("fixture", "fp32", CLASSES)
    assert m["weights"] == "fp32"
    assert (m["val_top1"], m["val_top5"]) == (card.val_top1, card.val_top5)
    assert m["input"] == card.input
    assert m["versions"] == card.versions
    assert m["checkpoint_sha256"] == card.checkpoint_sha256
    assert (m["backend"]["engine"], m["backend"]["precision"]) == (client.engine, "fp32")
    if client.engine == "onnxruntime":
        assert m["backend"]["provider"] == "CPUExecutionProvider"  # no GPU provider here
    assert m["limits"]["max_upload_bytes"] == 1024 * 1024
    assert m["limits"]["max_batch_images"] == 8


def test_the_front_page_is_the_demo_page(client):
    r = client.get("/", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (307, "/ui")
    page = client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert "Tiny ImageNet classifier" in page.text
    assert "googletagmanager" not in page.text.lower()


def test_a_path_no_route_takes_is_a_json_404(client):
    for method in ("GET", "POST"):
        r = client.request(method, "/clasify")
        assert_error(r, 404, "not_found")
        assert r.headers["content-type"] == "application/json"
        assert "/docs.json" in r.json()["error"]["message"]


def test_bentoml_system_routes_stay(client):
    for path in ("/readyz", "/livez", "/metrics", "/docs.json", "/"):
        if path != "/metrics" or client.metrics:
            assert client.get(path).status_code == 200, path


def test_the_openapi_document_describes_the_api_and_bentomls_routes(client):
    spec = client.get("/docs.json").json()
    assert {"/classify", "/classify_batch", "/labels", "/model", "/readyz"} <= set(spec["paths"])
    batch = spec["paths"]["/classify_batch"]["post"]["requestBody"]["content"]
    images = batch["multipart/form-data"]["schema"]["properties"]["images"]
    assert images["maxItems"] == 8  # TIN_MAX_BATCH_IMAGES here
    assert spec["components"]["schemas"]["Error"]["required"] == ["error"]


def test_wrong_method_is_a_json_405_that_says_what_is_allowed(client):
    r = client.get("/classify")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert_error(client.post("/labels"), 405, "method_not_allowed")


def test_a_queue_too_long_to_wait_on_is_a_503_on_both_surfaces(client):
    from serving.routes import app

    batcher = app.state.service.predictions
    measured = batcher.seconds_per_image
    batcher.seconds_per_image = 1e6  # every request would now wait past TIN_BATCH_MAX_LATENCY_MS
    try:
        assert_error(classify(client, GOOD_JPEG), 503, "unavailable")
        native = client.post("/api/classify", files={"image": ("x.jpg", GOOD_JPEG, "image/jpeg")})
        assert_error(native, 503, "unavailable")
    finally:
        batcher.seconds_per_image = measured
    assert classify(client, GOOD_JPEG).status_code == 200


def test_a_client_that_hangs_up_is_not_a_server_error():
    async def reads_the_body(request):
        await request.body()

    async def hang_up():
        return {"type": "http.disconnect"}

    request = Request(
        {"type": "http", "method": "POST", "path": "/classify", "headers": []}, hang_up
    )
    response = asyncio.run(json_errors(reads_the_body)(request))
    assert response.status_code == 499  # as nginx logs it: not counted as a 5xx


# --- preprocessing -----------------------------------------------------------------------------


def test_decode_equals_the_training_data_layer_on_fixture_jpegs(tiny_root):
    files = sorted(tiny_root.glob("train/*/images/*.JPEG")) + sorted(tiny_root.glob("val/images/*"))
    assert len(files) == 64
    for f in files:
        data = f.read_bytes()
        np.testing.assert_array_equal(decode(data), decode_image(data, f.name)[0], err_msg=str(f))


@pytest.mark.real_data
def test_decode_equals_the_training_data_layer_on_the_real_val_images(real_zip):
    with zipfile.ZipFile(real_zip) as zf:
        names = [n for n in zf.namelist() if "/val/images/" in n and n.endswith(".JPEG")]
        assert len(names) == 5000
        for n in names:
            data = zf.read(n)
            np.testing.assert_array_equal(decode(data), decode_image(data, n)[0], err_msg=n)


def test_other_sizes_are_resized_with_pil_bicubic():
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (96, 128, 3), np.uint8))
    expected = np.asarray(im.resize((64, 64), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(decode(encode(im, "PNG")), expected)


def test_exif_orientation_is_applied():
    arr = fixture_array(2)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = encode(im, "PNG", exif=exif.tobytes())
    np.testing.assert_array_equal(decode(data), np.rot90(arr, k=-1))


def photo(width: int, height: int, **save) -> bytes:
    """A photo-sized JPEG: a fixture image upscaled, as a phone's is smooth at 64-px scale."""
    im = Image.fromarray(fixture_array(3)).resize((width, height), Image.Resampling.BICUBIC)
    return encode(im, "JPEG", quality=90, **save)


def test_a_large_jpeg_is_decoded_reduced_with_the_full_decodes_answer():
    data = photo(2000, 1500)
    reduced, size = open_reduced(data)
    assert size == (2000, 1500)  # the answers report the upload's own size
    assert min(reduced.size) >= 128
    assert max(reduced.size) <= 500
    full = np.asarray(open_rgb(data).resize((64, 64), Image.Resampling.BICUBIC), np.int16)
    assert np.abs(decode(data).astype(np.int16) - full).mean() < 1.0  # of 255


def test_a_reduced_jpeg_keeps_its_exif_orientation_and_displayed_size():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    data = photo(1600, 800, exif=exif.tobytes())
    reduced, size = open_reduced(data)
    assert size == (800, 1600)
    assert reduced.size[1] > reduced.size[0]  # upright: taller than wide
    full = np.asarray(open_rgb(data).resize((64, 64), Image.Resampling.BICUBIC), np.int16)
    assert np.abs(decode(data).astype(np.int16) - full).mean() < 1.0


def test_a_small_jpeg_is_decoded_at_full_size():
    data = photo(200, 150)
    reduced, _ = open_reduced(data)
    assert reduced.size == (200, 150)  # draft never goes below 256 a side


def test_only_small_uploads_count_as_cheap_to_decode_in_place():
    side = math.isqrt(SMALL_PIXELS)
    assert is_small(photo(64, 64))
    assert is_small(photo(side, side))
    assert not is_small(photo(side + 1, side))
    assert not is_small(photo(500, 375))
    assert not is_small(b"not an image")  # left to the full decode, which names the problem


def test_small_uploads_are_decoded_on_the_event_loop_and_large_ones_in_a_thread(monkeypatch):
    hops = []
    real = routes.anyio.to_thread.run_sync

    async def counted(work, *args):
        hops.append(work)
        return await real(work, *args)

    monkeypatch.setattr(routes.anyio.to_thread, "run_sync", counted)
    small, large = photo(64, 64), photo(500, 375)
    (in_place,) = asyncio.run(routes.decode_all([small], 40_000_000))
    assert hops == []
    np.testing.assert_array_equal(in_place.array, decode(small))
    decoded = asyncio.run(routes.decode_all([small, large, b"junk"], 40_000_000))
    assert len(hops) == 1  # a batch goes to a thread, all of it in one hop
    asyncio.run(routes.decode_all([small, small], 40_000_000))
    assert len(hops) == 2  # even of small images: the loop blocks for one small decode at most
    np.testing.assert_array_equal(decoded[1].array, decode(large))
    assert isinstance(decoded[2], ImageError)


def rgba(colour, alpha) -> Image.Image:
    return Image.new("RGBA", (64, 64), (*colour, alpha))


def test_alpha_is_composited_on_white():
    assert (decode(encode(rgba((255, 0, 0), 0), "PNG")) == 255).all()  # transparent → white
    assert (decode(encode(rgba((255, 0, 0), 255), "PNG")) == [255, 0, 0]).all()
    half = decode(encode(rgba((0, 0, 0), 128), "PNG"))
    assert np.abs(half.astype(int) - 127).max() <= 1
    la = Image.new("LA", (64, 64), (0, 0))
    assert (decode(encode(la, "PNG")) == 255).all()
    pal = Image.new("P", (64, 64), 0)
    pal.putpalette([0, 0, 0, 10, 200, 30])
    pal.info["transparency"] = 0
    assert (decode(encode(pal, "PNG", transparency=0)) == 255).all()


def test_other_modes_become_rgb():
    gray = Image.new("L", (64, 64), 90)
    assert (decode(encode(gray, "PNG")) == 90).all()
    assert (decode(encode(Image.new("1", (64, 64), 1), "BMP")) == 255).all()
    cmyk = Image.new("CMYK", (64, 64), (0, 255, 255, 0))  # red
    out = decode(encode(cmyk, "JPEG", quality=95))
    assert np.abs(out.astype(int) - [255, 0, 0]).max() < 8
    sixteen = Image.fromarray(np.full((64, 64), 32768, np.uint16))  # mid gray, not white
    assert sixteen.mode == "I;16"
    assert np.abs(decode(encode(sixteen, "PNG")).astype(int) - 128).max() <= 1


def test_webp_bmp_and_first_frame_of_a_gif():
    arr = fixture_array(3)
    np.testing.assert_array_equal(decode(encode(arr, "WEBP", lossless=True)), arr)
    np.testing.assert_array_equal(decode(encode(arr, "BMP")), arr)
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    gif = encode(red, "GIF", save_all=True, append_images=[blue])
    assert (decode(gif) == [255, 0, 0]).all()


def test_decode_refusals_name_the_problem():
    with pytest.raises(ImageError, match="1,440,000 pixels") as e:
        decode(BAD_FILES["decompression bomb"][0], max_pixels=1_000_000)
    assert e.value.code == "image_too_large"
    assert decode(BAD_FILES["decompression bomb"][0], max_pixels=2_000_000).shape == (64, 64, 3)


# --- backend and settings ----------------------------------------------------------------------


def test_backend_matches_the_reference_computation(model_path):
    backend = open_backend(model_path, "onnxruntime", "fp32", max_batch=4)
    x = np.stack([fixture_array(i % CLASSES, seed=i) for i in range(5)])
    np.testing.assert_allclose(backend.predict(x), reference_probabilities(x, CLASSES), atol=1e-5)
    assert backend.predict(x[:0]).shape == (0, CLASSES)
    with pytest.raises(ValueError, match="uint8"):
        backend.predict(x.astype(np.float32))
    assert backend.info["provider"] == "CPUExecutionProvider"


def test_model_file_problems_say_what_to_do(tmp_path):
    with pytest.raises(ModelFileError, match="TIN_MODEL"):
        read_card(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable ONNX model"):
        read_card(tmp_path / "junk.onnx")
    import onnx

    foreign = build_model(CLASSES)
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ModelFileError, match="not a model exported"):
        read_card(tmp_path / "foreign.onnx")


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"TIN_MODEL": "nosuch:v1"}, "neither a file nor a model in BentoML's model store"),
        ({"TIN_MODEL": "README.md"}, "is not a readable ONNX model"),
        ({"TIN_MAX_BATCH_IMAGES": "lots"}, "TIN_MAX_BATCH_IMAGES='lots' is not a number"),
        ({"TIN_BODY_TIMEOUT_S": "soon"}, "TIN_BODY_TIMEOUT_S='soon' is not a number"),
    ],
)
def test_bentoml_serve_with_a_bad_setting_says_so_in_one_line(env, says, tmp_path):
    import os
    import subprocess
    import sys

    bentoml = Path(sys.executable).parent / "bentoml"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("TIN_", "BENTOML_"))}
    done = subprocess.run(
        [str(bentoml), "serve", "--port", "1"],
        cwd=REPO,
        env={**clean, "BENTOML_HOME": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.startswith("error: "), done.stderr[-2000:]
    assert says in done.stderr
    assert "Traceback" not in done.stderr


def test_the_model_is_named_by_what_it_is(tmp_path):
    from dataclasses import replace

    from serving.service import model_name

    card = fixture_card(CLASSES)
    settings = config.Settings(tmp_path / "model.onnx", 1, 1, 1)
    sha = card.checkpoint_sha256[:8]
    assert model_name(settings, card) == f"{card.preset}-{sha}"  # not "model"
    assert model_name(replace(settings, model_path=tmp_path / "tiny.onnx"), card) == "tiny"
    tagged = replace(settings, model_tag="tiny-imagenet-resnet:final-3f2a9c1d")
    assert model_name(tagged, card) == "tiny-imagenet-resnet:final-3f2a9c1d"


def test_settings_from_environment(monkeypatch, tmp_path):
    for k in ("TIN_MODEL", *LIMITS):
        monkeypatch.delenv(k, raising=False)
    s = config.settings()
    assert s.model_path == REPO / "models" / "model.onnx"
    assert (s.max_upload_bytes, s.max_batch_images) == (10 * 1024 * 1024, 64)
    monkeypatch.setenv("TIN_MODEL", str(tmp_path / "other.onnx"))
    monkeypatch.setenv("TIN_MAX_UPLOAD_MB", "2.5")
    s = config.settings()
    assert (s.model_name, s.max_upload_bytes) == ("other", int(2.5 * 1024 * 1024))
    monkeypatch.setenv("TIN_MAX_BATCH_IMAGES", "lots")
    with pytest.raises(config.ConfigError, match="TIN_MAX_BATCH_IMAGES"):
        config.settings()


# --- the real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    """`bentoml serve` from the repo root on a free port, as `make serve` runs it."""
    with Server(model_path, tmp_path_factory.mktemp("server")) as running:
        yield running.url


def test_real_server_classifies_jpegs_with_a_stock_client(server, tiny_root):
    files = sorted(tiny_root.glob("val/images/*.JPEG"))
    images = [f.read_bytes() for f in files]
    card = fixture_card(CLASSES)
    with httpx.Client(base_url=server, timeout=60) as http:
        assert http.get("/livez").status_code == 200
        assert "onnxruntime" in http.get("/model").json()["backend"]["engine"]

        def one(data: bytes) -> str:
            r = http.post("/classify", files={"image": ("x.jpg", data, "image/jpeg")})
            assert r.status_code == 200, r.text
            return r.json()["predictions"][0]["wnid"]

        # Concurrent single-image requests go through adaptive batching in the model process.
        with ThreadPoolExecutor(8) as pool:
            top1 = list(pool.map(one, images))
        assert top1 == [card.wnids[expected_top1(d)] for d in images]

        sent = [*images[:3], b"broken"]
        r = http.post(
            "/classify_batch", files=[("images", ("x.jpg", d, "image/jpeg")) for d in sent]
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["predictions"][0]["wnid"] for x in results[:3]] == top1[:3]
        assert results[3]["error"]["code"] == "not_an_image"

        assert_error(classify(http, b""), 400, "empty_image")
        big = b"\xff\xd8\xff" + b"\x00" * (11 * 1024 * 1024)  # the default 10 MiB limit
        assert_error(classify(http, big), 413, "upload_too_large")
        metrics = http.get("/metrics")
        assert metrics.status_code == 200
        assert "bentoml" in metrics.text


def test_tracing_is_off_unless_asked_for(monkeypatch):
    monkeypatch.delenv("TIN_TRACING", raising=False)
    assert config.tracing_options() == {"tracing": {"excluded_urls": ".*"}}
    monkeypatch.setenv("TIN_TRACING", "1")
    assert config.tracing_options() == {}  # BentoML's own tracing configuration applies
    monkeypatch.setenv("TIN_TRACING", "yes")
    with pytest.raises(config.ConfigError, match="TIN_TRACING='yes': use 1"):
        config.tracing_options()

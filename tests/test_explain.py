"""Class-activation maps: the overlay drawing, /explain and /explain_batch on the service
in-process (the fixture model's maps, computed by export/graph.py, checked against numpy), their
PNG forms, and their error contract."""

from __future__ import annotations

import email
import io

import numpy as np
import pytest
from PIL import Image

from inference import overlay
from inference.answers import Ask, explanation
from tests.abuse import BAD_FILES
from tests.serving_fixtures import (
    POOL,
    Server,
    encode,
    fixture_array,
    fixture_card,
    fixture_images,
    reference_logits,
    write_model,
)

CLASSES = 4
LIMITS = {"TIN_MAX_UPLOAD_MB": "1", "TIN_MAX_BATCH_IMAGES": "8", "TIN_MAX_PIXELS": "1000000"}


@pytest.fixture(scope="module", params=["onnxruntime", "openvino"])
def client(request, tmp_path_factory):
    """The service in-process, on the 4-class fixture model (with its maps), on each engine."""
    pytest.importorskip("onnx")
    from starlette.testclient import TestClient

    from serving.service import Classifier

    model = write_model(tmp_path_factory.mktemp("models") / "tiny.onnx", classes=CLASSES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIN_MODEL", str(model))
        mp.setenv("TIN_BACKEND", request.param)
        for k, v in LIMITS.items():
            mp.setenv(k, v)
        mp.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path_factory.mktemp("prometheus")))
        # BentoML registers its metrics in a process-wide registry when an app starts: a second
        # in-process app (tests/test_serving.py starts one) would fail on duplicates.
        mp.setenv("BENTOML_CONFIG_OPTIONS", "services.Classifier.metrics.enabled=false")
        with TestClient(Classifier.to_asgi()) as c:
            yield c


def explain(client, data: bytes, **params):
    return client.post("/explain", files={"image": ("x.jpg", data)}, data=params)


# --- the drawing ----------------------------------------------------------------------------


def test_upsampling_is_bilinear_with_half_pixel_centres():
    cam = np.array([[0.0, 1.0], [2.0, 3.0]])
    up = overlay.upsample(cam, 4, 4)
    # torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False) gives these
    expected = np.array(
        [[0, 0.25, 0.75, 1], [0.5, 0.75, 1.25, 1.5], [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]]
    )
    np.testing.assert_allclose(up, expected)
    assert overlay.upsample(np.ones((4, 4)), 7, 3).shape == (7, 3)


def test_colour_scale_runs_from_dark_blue_to_red_and_a_flat_map_is_low():
    assert overlay.TURBO.shape == (256, 3)
    low, high = overlay.TURBO[40].astype(int), overlay.TURBO[230].astype(int)
    assert low[2] > low[0] + 100  # blue near the low end
    assert high[0] > high[2] + 100  # red near the high end
    np.testing.assert_array_equal(overlay.normalise(np.full((2, 2), 5.0)), np.zeros((2, 2)))


def test_overlay_keeps_the_image_size_and_is_hot_where_the_map_is():
    image = Image.new("RGB", (120, 80), (128, 128, 128))
    cam = np.zeros((4, 4))
    cam[0, 3] = 10  # top right
    out = np.asarray(overlay.overlay(image, cam)).astype(int)
    assert out.shape == (80, 120, 3)
    top_right, bottom_left = out[5, 115], out[75, 5]
    assert top_right[0] > top_right[2] + 50  # the high end: red
    # the low end (Turbo's darkest) blended half over the grey
    np.testing.assert_allclose(bottom_left, (128 + overlay.TURBO[0]) / 2, atol=1)


def test_explanation_adds_up_and_can_name_one_class():
    rng = np.random.default_rng(0)
    cam = rng.normal(size=(CLASSES, 3, 3))
    bias = rng.normal(size=CLASSES)
    logits = cam.mean(axis=(1, 2)) + bias
    probs = np.exp(logits) / np.exp(logits).sum()
    card = fixture_card(CLASSES)
    top = explanation(probs, logits, cam, card, Ask(top_k=2))
    assert [c["rank"] for c in top] == [1, 2]
    assert top[0]["wnid"] == card.wnids[int(np.argmax(probs))]
    for c in top:
        assert np.mean(c["cam"]) + c["bias"] == pytest.approx(c["logit"], abs=1e-5)
    least = card.wnids[int(np.argmin(probs))]
    (one,) = explanation(probs, logits, cam, card, Ask(wnid=least))
    assert (one["wnid"], one["rank"]) == (least, CLASSES)


# --- the service ----------------------------------------------------------------------------


def test_explain_json_maps_add_up_to_the_models_logits(client):
    data = encode(fixture_array(2, CLASSES, seed=3))
    r = explain(client, data)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["map_size"] == [POOL, POOL]
    assert body["image_size"] == [64, 64]
    from inference.preprocess import decode

    logits = reference_logits(decode(data)[None], CLASSES)[0]
    assert len(body["predictions"]) == 3  # the default top_k
    assert [p["rank"] for p in body["predictions"]] == [1, 2, 3]
    assert body["predictions"][0]["wnid"] == fixture_card(CLASSES).wnids[int(np.argmax(logits))]
    for p in body["predictions"]:
        i = fixture_card(CLASSES).wnids.index(p["wnid"])
        assert p["logit"] == pytest.approx(float(logits[i]), abs=1e-4)
        assert np.mean(p["cam"]) + p["bias"] == pytest.approx(p["logit"], abs=1e-4)
        assert np.asarray(p["cam"]).shape == (POOL, POOL)
    # The same image's /classify answer ranks the classes the same way.
    classified = client.post("/classify", files={"image": ("x.jpg", data)}).json()
    assert [p["wnid"] for p in classified["predictions"][:3]] == [
        p["wnid"] for p in body["predictions"]
    ]


def test_explain_one_class_by_wnid_and_a_raw_body(client):
    data = encode(fixture_array(1, CLASSES, seed=4))
    wnid = fixture_card(CLASSES).wnids[3]
    r = client.post(f"/explain?class={wnid}", content=data, headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    (p,) = r.json()["predictions"]
    assert p["wnid"] == wnid


def test_explain_png_is_the_map_over_the_upright_image_at_its_own_size(client):
    # A 90×40 JPEG with EXIF orientation 6 (rotate 90°): displayed 40 wide and 90 high.
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(fixture_array(0, CLASSES)).resize((90, 40)).save(buf, "JPEG", exif=exif)
    r = explain(client, buf.getvalue(), top_k="1", format="png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert r.headers["x-rank"] == "1"
    assert r.headers["x-wnid"] in fixture_card(CLASSES).wnids
    png = Image.open(io.BytesIO(r.content))
    assert png.size == (40, 90)
    assert len(np.unique(np.asarray(png).reshape(-1, 3), axis=0)) > 10  # a map, not a flat image


def test_a_large_upload_is_drawn_at_a_bounded_size_with_the_answer_of_classify(client):
    # 1500×600 stored, EXIF 6: displayed 600 wide, 1500 high; drawn 410×1024 (the long side at
    # OVERLAY_MAX_SIDE), whatever the upload's resolution.
    exif = Image.Exif()
    exif[0x0112] = 6
    big = Image.fromarray(fixture_array(1, CLASSES)).resize((1500, 600), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=90, exif=exif.tobytes())
    r = explain(client, data, top_k="1", format="png")
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(r.content)).size == (410, 1024)
    assert explain(client, data, top_k="1").json()["image_size"] == [600, 1500]
    top = client.post("/classify", files={"image": ("x.jpg", data)}).json()["predictions"][0]
    assert r.headers["x-wnid"] == top["wnid"]  # the same decode for the model as /classify's


def test_overlays_past_the_limit_are_a_503_with_retry_after_and_json_still_answers(client):
    from serving.routes import app

    slots = app.state.service.overlays
    taken, slots.free = slots.free, 0  # as if every slot were drawing
    try:
        data = encode(fixture_array(0, CLASSES))
        r = explain(client, data, top_k="1", format="png")
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "busy"
        assert explain(client, data, top_k="1").status_code == 200  # JSON maps need no slot
    finally:
        slots.free = taken
    assert explain(client, data, top_k="1", format="png").status_code == 200
    assert slots.free == taken  # given back, after a success as after a refusal


def test_a_40_megapixel_overlay_stays_small_in_memory(tmp_path):
    """8000×5000 JPEG → the overlay a service draws for it: decoded reduced, drawn at 1024 a
    side, in a fresh process whose peak memory is measured (drawn at full size it took 4.6 GB;
    decoding it in full alone takes 120 MB)."""
    import subprocess
    import sys
    from pathlib import Path

    x = np.linspace(0, 255, 8000, dtype=np.float32)
    y = np.linspace(0, 255, 5000, dtype=np.float32)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], -1).astype(np.uint8)
    photo = tmp_path / "40mp.jpg"
    Image.fromarray(rgb).save(photo, "JPEG", quality=80)
    script = tmp_path / "draw.py"
    script.write_text(
        "import resource, sys\n"
        "import numpy as np\n"
        "from inference import overlay\n"
        "from inference.preprocess import open_for_overlay, open_reduced\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "shown = open_for_overlay(data)\n"
        "open_reduced(data)\n"
        "png = overlay.png(overlay.overlay(shown, np.random.default_rng(0).normal(size=(4, 4))))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(shown.size, (after - before) // 1024)\n"
    )
    repo = Path(__file__).resolve().parent.parent
    command = [sys.executable, str(script), str(photo)]
    env = {"PYTHONPATH": str(repo)}
    done = subprocess.run(command, cwd=repo, text=True, capture_output=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    size, grown_mib = done.stdout.strip().rsplit(" ", 1)
    assert size == "(1024, 640)"
    assert int(grown_mib) < 100, done.stdout  # MiB past reading the file


def test_explain_png_of_several_classes_is_multipart_one_png_each(client):
    data = encode(fixture_array(3, CLASSES, seed=5))
    r = explain(client, data, top_k="3", format="png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("multipart/mixed; boundary=")
    message = email.message_from_bytes(
        b"Content-Type: " + r.headers["content-type"].encode() + b"\r\n\r\n" + r.content
    )
    parts = message.get_payload()
    assert [p["X-Rank"] for p in parts] == ["1", "2", "3"]
    for p in parts:
        assert p.get_content_type() == "image/png"
        assert Image.open(io.BytesIO(p.get_payload(decode=True))).size == (64, 64)


def test_explain_batch_answers_each_image_in_place(client):
    good = fixture_images(2, CLASSES)
    files = [("images", ("a.jpg", good[0])), ("images", ("b.jpg", b"not an image")),
             ("images", ("c.jpg", good[1]))]  # fmt: skip
    r = client.post("/explain_batch", files=files, data={"top_k": "2"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["index"] for x in results] == [0, 1, 2]
    assert results[1]["error"]["code"] == "not_an_image"
    for x in (results[0], results[2]):
        assert len(x["predictions"]) == 2
        assert x["image_size"] == [64, 64]
    assert r.json()["map_size"] == [POOL, POOL]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"class": "n00000000"}, 400, "unknown_class"),
        ({"class": fixture_card(CLASSES).wnids[0], "top_k": "2"}, 400, "conflicting_parameters"),
        ({"format": "gif"}, 400, "bad_format"),
        ({"top_k": "0"}, 400, "bad_top_k"),
        ({"top_k": "two"}, 400, "bad_top_k"),
    ],
)
def test_explain_refuses_bad_parameters_with_a_json_400(client, params, status, code):
    r = explain(client, fixture_images(1)[0], **params)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    if code == "unknown_class":
        assert "GET /labels" in r.json()["error"]["message"]


def test_class_takes_a_label_too_and_an_unknown_one_gets_the_nearest(client):
    card = fixture_card(CLASSES)
    wnid, label = card.wnids[1], card.names[1]
    data = fixture_images(1)[0]
    for given in (label, label.upper()):
        r = explain(client, data, **{"class": given})
        assert r.status_code == 200, r.text
        assert [p["wnid"] for p in r.json()["predictions"]] == [wnid]
    r = explain(client, data, **{"class": label[:-1]})  # one letter off
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unknown_class"
    assert f"did you mean {label.lower()!r}" in r.json()["error"]["message"]


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_explain_refuses_bad_files_with_400(client, name):
    data, code = BAD_FILES[name]
    for fmt in ("json", "png"):
        r = explain(client, data, format=fmt)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == code


def test_a_misspelt_query_parameter_is_refused_not_ignored(client):
    files = {"image": ("x.jpg", fixture_images(1)[0])}
    r = client.post("/explain?clas=n01443537", files=files)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "unknown_parameter"
    assert "top_k, class, format" in r.json()["error"]["message"]
    assert client.post("/classify?topk=3", files=files).status_code == 400


def test_explain_batch_is_json_only(client):
    files = [("images", ("a.jpg", fixture_images(1)[0]))]
    r = client.post("/explain_batch", files=files, data={"format": "png"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_format"


def test_a_model_without_maps_says_so(tmp_path):
    """An export from before the maps still classifies; /explain says what to do."""
    import httpx

    with Server(write_model(tmp_path / "old.onnx", cam=False), tmp_path) as server:
        image = {"image": ("x.jpg", fixture_images(1)[0])}
        assert httpx.post(f"{server.url}/classify", files=image).is_success
        r = httpx.post(f"{server.url}/explain", files=image)
        assert r.status_code == 501
        assert r.json()["error"]["code"] == "no_activation_maps"

"""The BentoML-native APIs (/api/classify, /api/classify_batch; serving/native.py) on a live
`bentoml serve`: BentoML's own clients, the error contract, and a service that depends on this
one by URL."""

from __future__ import annotations

import asyncio

import bentoml
import httpx
import pytest
from bentoml.exceptions import BentoMLException

from clients.bentoml_upload import BytesUpload
from tests.abuse import BAD_FILES
from tests.serving_fixtures import Server, fixture_images, write_model

LIMITS = {"TIN_MAX_UPLOAD_MB": "1", "TIN_MAX_BATCH_IMAGES": "4"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("onnx")
    workdir = tmp_path_factory.mktemp("native")
    with Server(write_model(workdir / "tiny.onnx"), workdir, env=LIMITS) as running:
        yield running


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, data in enumerate(fixture_images(3)):
        paths.append(folder / f"{i}.jpg")
        paths[-1].write_bytes(data)
    (folder / "broken.jpg").write_bytes(BAD_FILES["truncated JPEG"][0])
    return paths, folder / "broken.jpg"


@pytest.fixture(scope="module")
def client(server):
    with bentoml.SyncHTTPClient(server.url) as c:
        yield c


def mounted(server, data: bytes, k: int = 5) -> dict:
    r = httpx.post(f"{server.url}/classify", files={"image": ("x.jpg", data)}, data={"top_k": k})
    assert r.status_code == 200, r.text
    return r.json()


def assert_error(response: httpx.Response, status: int, code: str):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


def test_schema_lists_the_native_apis_on_their_own_routes(server):
    routes = httpx.get(f"{server.url}/schema.json").json()["routes"]
    assert [(r["name"], r["route"]) for r in routes] == [
        ("classify", "/api/classify"),
        ("classify_batch", "/api/classify_batch"),
        ("explain", "/api/explain"),
        ("explain_batch", "/api/explain_batch"),
    ]
    paths = httpx.get(f"{server.url}/docs.json").json()["paths"]
    assert {"/classify", "/api/classify", "/api/classify_batch"} <= set(paths)
    responses = paths["/api/classify"]["post"]["responses"]
    assert responses["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")


def test_sync_client_takes_a_path_a_str_or_bytes_and_matches_the_mounted_route(
    server, client, images
):
    (first, *_), _ = images
    expected = mounted(server, first.read_bytes(), 2)
    assert client.classify(image=first, top_k=2) == expected
    assert client.classify(image=str(first), top_k=2) == expected
    assert client.classify(image=BytesUpload(first.read_bytes()), top_k=2) == expected
    assert len(client.classify(image=first)["predictions"]) == 4  # default 5, 4 classes


def test_batch_keeps_order_and_answers_a_broken_image_in_place(server, client, images):
    paths, broken = images
    result = client.classify_batch(images=[paths[0], broken, paths[1]], top_k=1)
    assert [r["index"] for r in result["results"]] == [0, 1, 2]
    assert result["results"][1] == {
        "index": 1,
        "confident": None,
        "predictions": [],
        "error": {"code": "truncated_image", "message": result["results"][1]["error"]["message"]},
    }
    for i, path in ((0, paths[0]), (2, paths[1])):
        assert (
            result["results"][i]["predictions"]
            == mounted(server, path.read_bytes(), 1)["predictions"]
        )


def test_explain_through_the_sync_client_matches_the_mounted_route(server, client, images):
    paths, broken = images
    data = paths[0].read_bytes()
    expected = httpx.post(
        f"{server.url}/explain", files={"image": ("x.jpg", data)}, data={"top_k": "2"}
    ).json()
    answer = client.explain(image=paths[0], top_k=2)
    assert answer == expected
    for p in answer["predictions"]:
        assert sum(map(sum, p["cam"])) / 64 + p["bias"] == pytest.approx(p["logit"], abs=1e-4)
    wnid = answer["predictions"][1]["wnid"]
    (one,) = client.explain(image=paths[0], wnid=wnid)["predictions"]
    assert (one["wnid"], one["rank"]) == (wnid, 2)
    batch = client.explain_batch(images=[paths[0], broken], top_k=1)
    assert batch["results"][0]["predictions"] == answer["predictions"][:1]
    assert batch["results"][1]["error"]["code"] == "truncated_image"
    with pytest.raises(BentoMLException) as e:
        client.explain(image=broken)
    assert int(e.value.error_code) == 400
    with pytest.raises(BentoMLException) as e:
        client.explain(image=paths[0], wnid="n00000000")
    assert '"code":"unknown_class"' in str(e.value).replace(" ", "")


def test_a_broken_upload_raises_with_our_json_body(client, images):
    _, broken = images
    with pytest.raises(BentoMLException) as e:
        client.classify(image=broken)
    assert int(e.value.error_code) == 400
    assert '"code":"truncated_image"' in str(e.value).replace(" ", "")


def test_async_client_and_concurrent_calls_with_bytes(server, images):
    (first, *_), _ = images
    data = first.read_bytes()

    async def run():
        async with bentoml.AsyncHTTPClient(server.url) as c:
            calls = [c.classify(image=BytesUpload(data), top_k=1) for _ in range(8)]
            return await asyncio.gather(*calls)

    results = asyncio.run(run())
    assert all(r == mounted(server, data, 1) for r in results)


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": {"top_k": "3"}}, 400, "missing_image"),  # urlencoded, no image
        ({"files": {"top_k": (None, "3")}}, 400, "missing_image"),  # multipart, no image
        ({"data": {"image": "http://93.184.216.34/x.jpg"}}, 400, "missing_image"),  # not fetched
        ({"files": {"image": (None, "http://10.0.0.1/x.jpg")}}, 400, "missing_image"),
        ({"content": b"\xff\xd8\xff", "headers": {"content-type": "image/jpeg"}}, 415, None),
        ({"json": {"image": "aGVsbG8="}}, 415, "unsupported_media_type"),
        (
            {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}},
            400,
            "bad_multipart",
        ),
    ],
)
def test_request_level_problems_are_4xx_in_our_shape(server, kwargs, status, code):
    r = httpx.post(f"{server.url}/api/classify", **kwargs)
    assert_error(r, status, code or "unsupported_media_type")


@pytest.mark.parametrize("route", ["/api/classify", "/api/classify_batch", "/api/explain"])
def test_a_part_the_api_does_not_take_is_a_400_not_a_500(server, images, route):
    (first, *_), _ = images
    data = first.read_bytes()
    field = "images" if route.endswith("_batch") else "image"
    for files in ({"file": ("a.jpg", data)}, {field: ("a.jpg", data), "extra": ("b.jpg", data)}):
        r = httpx.post(f"{server.url}{route}", files=files)
        assert_error(r, 400, "unknown_parameter")
        assert field in r.json()["error"]["message"]  # it says what the route takes


def test_min_confidence_through_the_sync_client(server, client, images):
    (first, *_), _ = images
    p = mounted(server, first.read_bytes())["predictions"][0]["probability"]
    sure = client.classify(image=first, min_confidence=p / 2)
    assert (sure["min_confidence"], sure["confident"]) == (pytest.approx(p / 2), True)
    unsure = client.classify_batch(images=[first], min_confidence=(1 + p) / 2)
    assert unsure["results"][0]["confident"] is False
    assert client.explain(image=first, min_confidence=0.0)["confident"] is True
    assert client.classify(image=first)["confident"] is None
    files = {"image": ("x.jpg", first.read_bytes()), "min_confidence": (None, "2")}
    r = httpx.post(f"{server.url}/api/classify", files=files)
    assert_error(r, 400, "bad_min_confidence")


@pytest.mark.parametrize("top_k", ["0", "201", "-1", "abc", "1.5", "true", "null", ""])
def test_a_bad_top_k_is_bad_top_k(server, images, top_k):
    (first, *_), _ = images
    files = {"image": ("x.jpg", first.read_bytes()), "top_k": (None, top_k)}
    assert_error(httpx.post(f"{server.url}/api/classify", files=files), 400, "bad_top_k")


def test_limits_hold_on_the_native_routes(server, images):
    (first, *_), _ = images
    url = f"{server.url}/api/classify_batch"
    five = [("images", (f"{i}.jpg", first.read_bytes())) for i in range(5)]  # the limit is 4
    assert_error(httpx.post(url, files=five), 400, "too_many_images")
    big = [("images", ("big.jpg", b"\xff\xd8\xff" + b"\0" * (1 << 20)))]  # TIN_MAX_UPLOAD_MB=1
    assert_error(httpx.post(url, files=big), 413, "upload_too_large")

    def chunks():  # no Content-Length: cut off while streaming
        yield b"--b\r\nContent-Disposition: form-data; name=images; filename=a\r\n\r\n"
        for _ in range(40):
            yield b"\0" * 65536

    headers = {"content-type": "multipart/form-data; boundary=b"}
    assert_error(httpx.post(url, content=chunks(), headers=headers), 413, "upload_too_large")
    r = httpx.get(url)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    assert_error(httpx.post(f"{server.url}/api/nothing"), 404, "not_found")


def test_the_mounted_curl_forms_still_work(server, images):
    (first, *_), _ = images
    data = first.read_bytes()
    raw = httpx.post(
        f"{server.url}/classify?top_k=2", content=data, headers={"content-type": "image/jpeg"}
    )
    assert raw.json() == mounted(server, data, 2)


def test_a_service_depending_on_it_by_url(server, images, tmp_path):
    paths, broken = images
    env = {"TIN_URL": server.url}
    caller = Server(paths[0], tmp_path, env=env, target="tests.native_caller:Caller")
    with caller, httpx.Client(base_url=caller.url, timeout=60) as http:
        r = http.post("/top1", files={"image": ("a.jpg", paths[0].read_bytes())})
        assert r.status_code == 200, r.text
        expected = mounted(server, paths[0].read_bytes(), 1)["predictions"][0]
        assert r.json()["top1"] == expected
        r = http.post("/top1", files={"image": ("b.jpg", broken.read_bytes())})
        assert_error(r, 400, "truncated_image")  # passed on as the classifier answered
        files = [("images", ("a", paths[0].read_bytes())), ("images", ("b", b"xx"))]
        assert http.post("/top1_batch", files=files).json()["top1"] == [
            expected["wnid"],
            "not_an_image",
        ]

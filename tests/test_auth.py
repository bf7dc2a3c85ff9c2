"""API keys (serving/auth.py): the configuration, the comparison, and a live `bentoml serve` with
keys from both TIN_API_KEYS and TIN_API_KEYS_FILE."""

from __future__ import annotations

import bentoml
import httpx
import pytest
from bentoml.exceptions import BentoMLException

from serving.auth import api_keys, bearer_token, key_matches
from serving.config import ConfigError
from tests.serving_fixtures import Server, fixture_images, write_model

ENV_KEYS = ("env-key-one", "env-key-two")
FILE_KEY = "file-key-7f3a"
PROTECTED = [
    ("POST", "/classify"),
    ("POST", "/classify_batch"),
    ("GET", "/labels"),
    ("GET", "/model"),
    ("POST", "/explain"),
    ("POST", "/explain_batch"),
    ("POST", "/api/classify"),
    ("POST", "/api/classify_batch"),
    ("POST", "/api/explain"),
    ("POST", "/api/explain_batch"),
    ("GET", "/docs.json"),
    ("GET", "/schema.json"),
    ("POST", "/"),
    ("GET", "/static_content/swagger-ui.css"),
    ("GET", "/no/such/route"),
]
# The probes, the metrics, and the demo page: a browser cannot send a header when it opens a
# page, so the page is open (it holds no data) and asks for the key when the API answers 401.
OPEN = ("/livez", "/readyz", "/healthz", "/metrics", "/ui")


def test_keys_from_the_environment_and_a_file(tmp_path):
    assert api_keys({}) == ()
    assert api_keys({"TIN_API_KEYS": " a, b ,,"}) == (b"a", b"b")
    keys = tmp_path / "keys"
    keys.write_text("# comment\nc\n\n  d  \n")
    assert api_keys({"TIN_API_KEYS": "a", "TIN_API_KEYS_FILE": str(keys)}) == (b"a", b"c", b"d")
    keys.write_text("# only a comment\n")
    with pytest.raises(ConfigError, match="holds no key"):
        api_keys({"TIN_API_KEYS_FILE": str(keys)})
    with pytest.raises(ConfigError, match="cannot be read"):
        api_keys({"TIN_API_KEYS_FILE": str(tmp_path / "missing")})


def test_bearer_parsing_and_comparison():
    assert bearer_token([(b"authorization", b"Bearer abc")]) == b"abc"
    assert bearer_token([(b"authorization", b"bearer  abc ")]) == b"abc"
    assert bearer_token([(b"authorization", b"Basic abc")]) is None
    assert bearer_token([(b"authorization", b"Bearer ")]) is None
    assert bearer_token([]) is None
    keys = (b"first", b"second")
    assert key_matches(b"second", keys)
    assert not key_matches(b"secon", keys)
    assert not key_matches(b"", keys)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("onnx")
    workdir = tmp_path_factory.mktemp("auth")
    (workdir / "keys.txt").write_text(f"{FILE_KEY}\n")
    env = {"TIN_API_KEYS": ",".join(ENV_KEYS), "TIN_API_KEYS_FILE": str(workdir / "keys.txt")}
    with Server(write_model(workdir / "tiny.onnx"), workdir, env=env) as running:
        yield running


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {ENV_KEYS[0]}", "Bearer"])
def test_every_route_but_the_probes_and_the_page_needs_a_key(server, header):
    headers = {"Authorization": header} if header else {}
    with httpx.Client(base_url=server.url, headers=headers) as http:
        for method, path in PROTECTED:
            r = http.request(method, path)
            assert r.status_code == 401, (path, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == 'Bearer realm="tiny-imagenet"'
        for path in OPEN:
            assert http.get(path).status_code == 200, path
        front = http.get("/")  # to the page, which asks for the key itself
        assert (front.status_code, front.headers["location"]) == (307, "/ui")


@pytest.mark.parametrize("key", [*ENV_KEYS, FILE_KEY])
def test_each_configured_key_opens_every_route(server, key):
    image = fixture_images(1)[0]
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as http:
        assert http.post("/classify", files={"image": ("x.jpg", image)}).status_code == 200
        assert http.post("/api/classify", files={"image": ("x.jpg", image)}).status_code == 200
        for path in ("/labels", "/model", "/docs.json", "/schema.json"):
            assert http.get(path).status_code == 200, path
        assert http.post("/explain", files={"image": ("x.jpg", image)}).status_code == 200
        assert http.get("/no/such/route").status_code == 404  # past the key check


def test_bentoml_client_sends_its_token(server, tmp_path):
    (tmp_path / "x.jpg").write_bytes(fixture_images(1)[0])
    with pytest.raises(BentoMLException, match="schema"):
        bentoml.SyncHTTPClient(server.url)  # /schema.json needs the key too
    with bentoml.SyncHTTPClient(server.url, token=FILE_KEY) as client:
        assert client.classify(image=tmp_path / "x.jpg", top_k=1)["model"] == "tiny"


def test_the_server_log_shows_no_key(server):
    httpx.get(f"{server.url}/labels", headers={"Authorization": f"Bearer {ENV_KEYS[0]}"})
    httpx.get(f"{server.url}/labels", headers={"Authorization": "Bearer not-a-key-9d2"})
    log = server.log.read_text()
    assert "path=/labels" in log  # the access log is on
    assert "status=401" in log
    for secret in (*ENV_KEYS, FILE_KEY, "not-a-key-9d2", "Bearer"):
        assert secret not in log

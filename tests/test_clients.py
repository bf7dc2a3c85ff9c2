"""The client library and its CLI against the real service app, in-process: the BentoML service's
ASGI app behind Starlette's test transport, as tests/test_serving.py runs it. Failures the
service cannot produce on cue (dropped connections, 503s, an interrupt) are injected by a
transport wrapped around it; a fake service stands in only where the app is not the point."""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from clients import AsyncTinyImageNetClient, ClientError, Prediction, TinyImageNetClient, inputs
from clients import client as client_module
from clients.cli import main

REPO = Path(__file__).resolve().parent.parent
CLASSES = 4
URL = "http://testserver"
# Small limits, so that refusals are cheap to provoke: 1 MiB bodies, 8 images per request.
LIMITS = {"TIN_MAX_UPLOAD_MB": "1", "TIN_MAX_BATCH_IMAGES": "8"}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """The real service in-process, started once (model loaded): its httpx transport."""
    pytest.importorskip("bentoml")
    pytest.importorskip("onnx")
    from starlette.testclient import TestClient

    from serving.service import Classifier
    from tests.serving_fixtures import write_model

    model = write_model(tmp_path_factory.mktemp("models") / "tiny.onnx", classes=CLASSES)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIN_MODEL", str(model))
        for k, v in LIMITS.items():
            mp.setenv(k, v)
        mp.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path_factory.mktemp("prometheus")))
        # BentoML registers its metrics in a process-wide registry when an app starts, so a
        # second in-process app (tests/test_serving.py starts one) would fail on duplicates.
        mp.setenv("BENTOML_CONFIG_OPTIONS", "services.Classifier.metrics.enabled=false")
        with TestClient(Classifier.to_asgi()) as app:
            # httpx.Client keeps its transport here: requests through it reach the app directly.
            yield app._transport


class Faulty(httpx.BaseTransport):
    """The app's transport, recording each request; `fault(n)` can replace request n's answer
    with an exception class to raise or a status to answer, and `delay(n)` slows it."""

    def __init__(self, inner, fault=None, delay=None):
        self.inner, self.fault, self.delay = inner, fault, delay
        self.sent: list[httpx.Request] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        with self.lock:
            n = len(self.sent)
            self.sent.append(request)
        if self.delay:
            time.sleep(self.delay(n))
        fault = self.fault(n) if self.fault else None
        if isinstance(fault, type):
            raise fault("injected fault")
        if fault is not None:
            error = {"code": f"fault_{fault}", "message": f"injected {fault}"}
            return httpx.Response(fault, json={"error": error})
        return self.inner.handle_request(request)

    def images_sent(self) -> list[str]:
        """File names of the images uploaded, request after request."""
        names = []
        for r in self.sent:
            names += [n.decode() for n in re.findall(rb'; filename="([^"]*)"', r.content)]
        return names


def jpegs(n: int) -> list[bytes]:
    from tests.serving_fixtures import fixture_images

    return fixture_images(n, CLASSES)


def expected_wnid(data: bytes) -> str:
    """What the fixture model answers for an image, computed without the service."""
    from inference.preprocess import decode
    from tests.serving_fixtures import fixture_card, reference_probabilities

    probs = reference_probabilities(decode(data)[None], CLASSES)[0]
    return fixture_card(CLASSES).wnids[int(probs.argmax())]


def make_client(transport, **kwargs) -> TinyImageNetClient:
    kwargs.setdefault("backoff", 0.001)
    return TinyImageNetClient(URL, transport=transport, **kwargs)


def write_images(folder, datas: list[bytes], names=None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(datas):
        path = folder / (names[i] if names else f"img{i:03d}.jpg")
        path.write_bytes(data)
        paths.append(str(path))
    return paths


# --- one image ---------------------------------------------------------------------------------


def test_classify_takes_a_path_bytes_a_pil_image_or_an_array(service, tmp_path):
    from PIL import Image

    data = jpegs(1)[0]
    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    (path,) = write_images(tmp_path, [data])
    with make_client(service) as client:
        results = [client.classify(x, top_k=3) for x in (path, data, Image.fromarray(array), array)]
    assert {r.top1.wnid for r in results} == {expected_wnid(data)}
    assert results[0].input == path
    assert results[0].model == "tiny"
    assert [p.rank for p in results[0].predictions] == [1, 2, 3]
    assert isinstance(results[0].top1, Prediction)
    assert results[0].predictions[0].probability >= results[0].predictions[1].probability


def test_labels_model_info_and_ready(service):
    with make_client(service) as client:
        assert client.ready()
        labels = client.labels()
        info = client.model_info()
    assert [x.index for x in labels] == list(range(CLASSES))
    assert labels[0].wnid == "n01443537"
    assert info.name == "tiny"
    assert info.preset == "fixture"
    assert info.raw["limits"]["max_batch_images"] == 8


def test_needs_only_the_client_extra():
    """No torch, bentoml, numpy or Pillow on import: they are blocked, and the CLI still loads."""
    blocked = ["torch", "bentoml", "onnxruntime", "numpy", "PIL", "serving", "training"]
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({blocked!r}))\n"
        "import clients, clients.cli\n"
        "print(clients.TinyImageNetClient().classify_many([], progress=False))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_ready_is_false_without_a_service():
    def refuse(request):
        raise httpx.ConnectError("refused")

    with TinyImageNetClient(URL, transport=httpx.MockTransport(refuse)) as client:
        assert not client.ready()


def test_an_answer_that_is_not_the_api_is_a_client_error():
    def proxy_page(request):
        return httpx.Response(200, text="<html>login</html>")

    with TinyImageNetClient(URL, transport=httpx.MockTransport(proxy_page)) as client:
        with pytest.raises(ClientError, match="not JSON") as info:
            client.classify(b"image")
        assert info.value.code == "bad_response"
        with pytest.raises(ClientError, match="not JSON"):
            client.classify_many([b"image"], progress=False)


def test_a_400_is_raised_with_the_servers_message_and_never_retried(service):
    transport = Faulty(service)
    with make_client(transport, retries=5) as client, pytest.raises(ClientError) as info:
        client.classify(b"hello, this is not an image")
    e = info.value
    assert (e.status, e.code) == (400, "not_an_image")
    assert e.message
    assert e.message in str(e)
    assert len(transport.sent) == 1


def test_bad_arguments_and_inputs_fail_before_sending(service, monkeypatch, tmp_path):
    transport = Faulty(service)
    with make_client(transport) as client:
        with pytest.raises(ValueError, match="top_k"):
            client.classify(jpegs(1)[0], top_k=201)
        with pytest.raises(ValueError, match="top_k"):
            client.classify_iter([], top_k=0)  # at the call, not at the first next()
        with pytest.raises(ClientError, match="uint8") as info:
            client.classify(np.zeros((64, 64, 3), np.float32))
        assert info.value.code == "bad_input"
        with pytest.raises(ClientError) as info:
            client.classify(tmp_path / "missing.jpg")
        assert info.value.code == "unreadable_file"
        monkeypatch.setitem(__import__("sys").modules, "PIL", None)  # Pillow not installed
        with pytest.raises(ImportError, match="pip install pillow"):
            client.classify(np.zeros((64, 64, 3), np.uint8))
    assert transport.sent == []


# --- many images -------------------------------------------------------------------------------


def test_order_is_kept_at_concurrency_above_1(service):
    datas = jpegs(30)
    # Earlier requests answered later, so that completion order is not input order.
    transport = Faulty(service, delay=lambda n: 0.06 * (3 - n % 4))
    with make_client(transport, batch_size=3, concurrency=4) as client:
        results = client.classify_many(iter(datas), progress=False)  # any iterable
    assert [r.index for r in results] == list(range(30))
    assert [r.top1.wnid for r in results] == [expected_wnid(d) for d in datas]
    assert len(transport.sent) == 10
    assert all(r.input == f"<bytes #{i}>" for i, r in enumerate(results))


def test_a_bad_item_fails_in_its_place_and_the_rest_go_on(service, tmp_path):
    good = jpegs(4)
    big = b"\xff\xd8\xff" + bytes(1536 * 1024)  # over the service's 1 MiB: a 413 for its request
    inputs = [
        good[0],
        b"hello, this is not an image",
        tmp_path / "missing.jpg",
        good[1],
        big,
        np.zeros((64, 64, 3), np.float32),
        good[2],
        good[3],
    ]
    transport = Faulty(service)
    with make_client(transport, batch_size=8, concurrency=2) as client:
        results = client.classify_many(inputs, progress=False)
    assert [r.index for r in results] == list(range(8))
    codes = [None if r.ok else r.error.code for r in results]
    assert codes == [
        None,
        "not_an_image",
        "unreadable_file",
        None,
        "upload_too_large",
        "bad_input",
        None,
        None,
    ]
    assert results[4].error.status == 413
    assert [r.top1.wnid for r in results if r.ok] == [expected_wnid(d) for d in good]
    # The 6 images sent, refused with 413 for the big one, are halved until it is alone.
    sizes = [len(re.findall(rb'name="images"', r.content)) for r in transport.sent]
    assert sizes == [6, 3, 3, 1, 2]


def test_a_batch_over_the_servers_image_limit_is_split(service):
    datas = jpegs(12)
    transport = Faulty(service)
    with make_client(transport, batch_size=12) as client:  # the service takes 8
        results = client.classify_many(datas, progress=False)
    assert [r.top1.wnid for r in results] == [expected_wnid(d) for d in datas]
    assert len(transport.sent) == 3  # 12 refused with 400 too_many_images, then 6 + 6


def test_retry_with_backoff_then_success(service, monkeypatch):
    sleeps = []
    monkeypatch.setattr(client_module.time, "sleep", sleeps.append)
    faults = {0: httpx.ConnectError, 1: 503, 2: 429, 3: 504, 4: httpx.ReadTimeout}
    transport = Faulty(service, fault=faults.get)
    datas = jpegs(3)
    with make_client(transport, retries=5, backoff=0.5) as client:
        results = client.classify_many(datas, progress=False)
    assert [r.top1.wnid for r in results] == [expected_wnid(d) for d in datas]
    assert len(transport.sent) == 6
    # Exponential backoff with jitter: attempt k waits between half and all of 0.5 × 2^k.
    assert len(sleeps) == 5
    for k, s in enumerate(sleeps):
        assert 0.25 * 2**k <= s <= 0.5 * 2**k


def test_retry_after_is_honoured():
    client = TinyImageNetClient(backoff=0.1, max_backoff=30)
    assert client.delay(0, 3.0) == 3.0
    assert client.delay(0, 300.0) == 30.0  # but never past max_backoff
    assert client.delay(10, None) <= 30.0


def test_no_retry_on_a_400_in_a_batch(service):
    transport = Faulty(service, fault={0: 400}.get)
    with make_client(transport, retries=5) as client:
        results = client.classify_many(jpegs(2), progress=False)
    # Refused whole, the batch is split; each half goes once more and is answered.
    assert len(transport.sent) == 3
    assert all(r.ok for r in results)
    transport = Faulty(service, fault=lambda n: 400)
    with make_client(transport, retries=5) as client:
        (result,) = client.classify_many(jpegs(1), progress=False)
    assert len(transport.sent) == 1
    assert (result.error.status, result.error.code) == (400, "fault_400")


def test_a_service_that_stays_down_raises_after_the_retries(service):
    transport = Faulty(service, fault=lambda n: 503)
    with make_client(transport, retries=3) as client, pytest.raises(ClientError) as info:
        client.classify_many(jpegs(2), progress=False)
    assert (info.value.status, info.value.message) == (503, "injected 503")
    assert len(transport.sent) == 4


def test_iterables_stream_through_a_bounded_window():
    """An endless input: results come out in order while only a bounded number are read."""
    pulled = 0

    def endless():
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield f"image {i}".encode()

    def fake_service(request):  # one prediction per uploaded image
        n = request.read().count(b'name="images"')
        p = {"rank": 1, "wnid": "n0", "label": "x", "probability": 1.0}
        return httpx.Response(
            200,
            json={"model": "m", "results": [{"index": i, "predictions": [p]} for i in range(n)]},
        )

    client = TinyImageNetClient(URL, transport=httpx.MockTransport(fake_service))
    results = client.classify_iter(endless(), batch_size=4, concurrency=2, progress=False)
    first = list(itertools.islice(results, 10))
    results.close()
    assert [r.index for r in first] == list(range(10))
    assert pulled <= 10 + 2 * 2 * 4 + 4 + 1  # the window, and the chunk being filled


def test_requests_stay_under_the_byte_budget():
    sizes = [3, 3, 3, 9, 1, 1]  # MiB; 9 alone is over the budget and goes alone
    images = [bytes(n << 20) for n in sizes]
    chunks = inputs.chunks(images, batch_size=32, max_bytes=8 << 20)
    assert [[len(it.data) >> 20 for it in c] for c in chunks] == [[3, 3], [3], [9], [1, 1]]


# --- the async client --------------------------------------------------------------------------


class ToThread(httpx.AsyncBaseTransport):
    """An async transport over a sync one, run in worker threads: the async client, the app."""

    def __init__(self, inner: httpx.BaseTransport):
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        copy = httpx.Request(request.method, request.url, headers=request.headers, content=content)
        response = await asyncio.to_thread(self.inner.handle_request, copy)
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.read()
        )


def test_async_client_order_errors_and_retries(service):
    datas = jpegs(20)
    datas[7] = b"broken"
    transport = Faulty(
        service, fault={1: httpx.ConnectError, 2: 503}.get, delay=lambda n: 0.02 * (n % 3)
    )

    async def images():  # an async iterable
        for d in datas:
            yield d

    async def run():
        async with AsyncTinyImageNetClient(
            URL, transport=ToThread(transport), batch_size=3, concurrency=3, backoff=0.001
        ) as client:
            assert await client.ready()
            one = await client.classify(datas[0], top_k=2)
            many = await client.classify_many(images(), progress=False)
            with pytest.raises(ClientError) as info:
                await client.classify(b"broken")
            return one, many, info.value

    one, many, error = asyncio.run(run())
    assert one.top1.wnid == expected_wnid(datas[0])
    assert len(one.predictions) == 2
    assert [r.index for r in many] == list(range(20))
    assert many[7].error.code == "not_an_image"
    good = [i for i in range(20) if i != 7]
    assert [many[i].top1.wnid for i in good] == [expected_wnid(datas[i]) for i in good]
    assert (error.status, error.code) == (400, "not_an_image")


# --- the CLI -----------------------------------------------------------------------------------


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_walks_folders_records_in_order_and_fails_on_a_bad_image(service, tmp_path, capsys):
    datas = jpegs(5)
    paths = write_images(tmp_path / "in" / "b", datas[2:])
    paths = write_images(tmp_path / "in" / "a", datas[:2]) + paths
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    broken = write_images(tmp_path / "in" / "c", [b"broken"], ["broken.png"])
    out = tmp_path / "results.jsonl"
    args = ["predict", str(tmp_path / "in"), "--url", URL, "--out", str(out), "--no-progress"]
    assert main([*args, "--batch-size", "2", "--concurrency", "2"], transport=service) == 1
    records = read_jsonl(out)
    assert [r["input"] for r in records] == paths + broken
    assert [r["predictions"][0]["wnid"] for r in records[:5]] == [expected_wnid(d) for d in datas]
    assert len(records[0]["predictions"]) == CLASSES  # top_k 5, of 4 classes
    assert records[5]["error"]["code"] == "not_an_image"
    err = capsys.readouterr().err
    assert "skipping 1 non-image files" in err
    assert "notes.txt" in err
    assert "broken.png" in err
    assert "5 classified, 1 failed" in err

    # Run again: everything is in the file already, so nothing is sent, and the failure stands.
    transport = Faulty(service)
    assert main(args, transport=transport) == 1
    assert transport.sent == []
    assert len(read_jsonl(out)) == 6
    assert "6 already in" in capsys.readouterr().err


def test_predict_csv_and_stdout(service, tmp_path, capsys):
    datas = jpegs(3)
    paths = write_images(tmp_path / "in", datas)
    out = tmp_path / "results.csv"
    assert main(["predict", *paths, "--url", URL, "--out", str(out), "--top-k", "2"], service) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["input"] for r in rows] == paths
    assert [r["wnid"] for r in rows] == [expected_wnid(d) for d in datas]
    assert all(len(r["top_k_wnids"].split()) == 2 and not r["error_code"] for r in rows)
    transport = Faulty(service)  # again: all there, nothing sent, the header not repeated
    assert main(["predict", *paths, "--url", URL, "--out", str(out)], transport) == 0
    assert transport.sent == []
    assert out.read_text().count("input,") == 1
    capsys.readouterr()

    assert main(["predict", paths[0], "--url", URL], service) == 0
    (record,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert record["input"] == paths[0]


def test_resume_after_an_interrupted_run_loses_and_repeats_nothing(service, tmp_path, capsys):
    datas = jpegs(14)
    paths = write_images(tmp_path / "in", datas)
    out = tmp_path / "results.jsonl"
    args = ["predict", str(tmp_path / "in"), "--url", URL, "--out", str(out), "--no-progress"]
    args += ["--batch-size", "2", "--concurrency", "2"]

    interrupted = Faulty(service, fault={3: KeyboardInterrupt}.get)
    assert main(args, transport=interrupted) == 130
    assert "run the same command again" in capsys.readouterr().err
    first = [r["input"] for r in read_jsonl(out)]
    assert first == paths[: len(first)]
    assert 0 < len(first) < len(paths)
    with out.open("a") as f:  # and the process was killed halfway through writing a record
        f.write('{"input": "' + paths[len(first)])

    resumed = Faulty(service)
    assert main(args, transport=resumed) == 0
    records = read_jsonl(out)
    assert [r["input"] for r in records] == paths  # each once, in order
    assert [r["predictions"][0]["wnid"] for r in records] == [expected_wnid(d) for d in datas]
    sent_again = sorted(resumed.images_sent())
    assert sent_again == sorted(p.rsplit("/", 1)[1] for p in paths[len(first) :])


def test_predict_when_the_service_is_down_keeps_what_it_has(service, tmp_path, capsys):
    paths = write_images(tmp_path / "in", jpegs(6))
    out = tmp_path / "results.jsonl"
    args = ["predict", *paths, "--url", URL, "--out", str(out), "--batch-size", "2"]
    down = Faulty(service, fault=lambda n: httpx.ConnectError if n >= 1 else None)
    assert main([*args, "--retries", "1", "--concurrency", "1"], transport=down) == 3
    assert "could not be used" in capsys.readouterr().err
    assert [r["input"] for r in read_jsonl(out)] == paths[:2]
    assert main(args, transport=service) == 0
    assert [r["input"] for r in read_jsonl(out)] == paths


def test_predict_usage_errors(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["predict", str(tmp_path), "--top-k", "0"])
    assert info.value.code == 2


def test_evaluate_reports_top1_and_top5(service, tiny_root, capsys):
    val = tiny_root / "val"
    truth = [line.split("\t")[:2] for line in (val / "val_annotations.txt").read_text().split("\n")]
    truth = [t for t in truth if len(t) == 2]
    hits = sum(expected_wnid((val / "images" / f).read_bytes()) == w for f, w in truth)
    for folder in (val, tiny_root):  # the val folder, or the dataset root
        assert main(["evaluate", str(folder), "--url", URL, "--no-progress"], service) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["images"] == report["classified"] == len(truth) == 16
        assert report["top1"] == hits / 16
        assert report["top5"] == 1.0  # 4 classes
        assert report["model"] == "tiny"

    missing = tiny_root.parent / "elsewhere.txt"
    assert main(["evaluate", str(val), "--annotations", str(missing)], service) == 2


def test_evaluate_fails_when_an_image_does(service, tiny_copy, capsys):
    broken = sorted((tiny_copy / "val" / "images").iterdir())[3]
    broken.write_bytes(broken.read_bytes()[:100])
    assert main(["evaluate", str(tiny_copy / "val"), "--url", URL], service) == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["classified"], report["failed"]) == (15, 1)


# --- over the network --------------------------------------------------------------------------


def test_cli_through_bentoml_serve(tmp_path, tiny_root):
    """`python -m clients` in its own process against `bentoml serve`, as a user runs them."""
    pytest.importorskip("bentoml")
    pytest.importorskip("onnx")
    from tests.serving_fixtures import Server, write_model

    model = write_model(tmp_path / "tiny.onnx", classes=CLASSES)
    with Server(model, tmp_path) as server:

        def cli(*args):
            command = [sys.executable, "-m", "clients", *args, "--url", server.url, "--no-progress"]
            return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)

        out = tmp_path / "results.jsonl"
        done = cli("predict", str(tiny_root / "val"), "--out", str(out), "--concurrency", "3")
        assert done.returncode == 0, done.stderr
        assert "skipping 1 non-image files" in done.stderr  # val_annotations.txt
        records = read_jsonl(out)
        images = sorted((tiny_root / "val" / "images").iterdir())
        assert [r["input"] for r in records] == [str(p) for p in images]
        wnids = [r["predictions"][0]["wnid"] for r in records]
        assert wnids == [expected_wnid(p.read_bytes()) for p in images]

        done = cli("evaluate", str(tiny_root / "val"), "--batch-size", "5")
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        truth = dict(
            line.split("\t")[:2]
            for line in (tiny_root / "val" / "val_annotations.txt").read_text().splitlines()
        )
        hits = sum(w == truth[p.name] for w, p in zip(wnids, images, strict=True))
        assert report["top1"] == hits / len(images)


# --- activation maps -------------------------------------------------------------------------


def test_explain_gives_maps_as_arrays_that_add_up_and_an_overlay(service, tmp_path):
    from PIL import Image

    from tests.serving_fixtures import encode, fixture_array

    big = tmp_path / "big.png"  # the overlay is drawn at the input's own size
    big.write_bytes(encode(Image.fromarray(fixture_array(1, CLASSES)).resize((96, 80)), "PNG"))
    with make_client(service) as client:
        e = client.explain(big, top_k=2)
        assert e.ok
        assert e.image_size == (96, 80)
        assert [c.rank for c in e.predictions] == [1, 2]
        assert e.predictions[0].wnid == expected_wnid(big.read_bytes())
        for c in e.predictions:
            assert c.map.shape == e.map_size == (8, 8)
            assert float(c.map.mean()) + c.bias == pytest.approx(c.logit, abs=1e-4)
        overlay = e.overlay()
        assert overlay.size == (96, 80)
        assert len(set(overlay.getdata())) > 10
        wnid = e.predictions[1].wnid
        (only,) = client.explain(big.read_bytes(), cls=wnid).predictions
        assert (only.wnid, only.rank) == (wnid, 2)
        with pytest.raises(KeyError):
            e.overlay("n00000000")


def test_explain_iter_keeps_order_and_errors_in_place(service):
    datas = jpegs(3)
    with make_client(service) as client:
        results = list(client.explain_iter([datas[0], b"not an image", datas[1]], top_k=1))
    assert [r.ok for r in results] == [True, False, True]
    assert results[1].error.code == "not_an_image"
    assert results[2].predictions[0].wnid == expected_wnid(datas[1])
    assert results[0].map_size == (8, 8)


def test_cli_explain_writes_one_overlay_per_image_and_class_and_resumes(service, tmp_path, capsys):
    paths = write_images(tmp_path / "in", [*jpegs(2), b"broken"], ["a.jpg", "b.jpg", "c.jpg"])
    out = tmp_path / "maps"
    argv = ["explain", *paths, "--out", str(out), "--top-k", "2", "--url", URL]
    assert main(argv, transport=service) == 1  # c.jpg failed
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 4
    from tests.serving_fixtures import fixture_card

    labels = {c.lower().replace(" ", "-") for c in fixture_card(CLASSES).names}
    assert all(n.split(".")[-2].split("-", 1)[1] in labels for n in pngs), pngs  # a.1-goldfish
    from PIL import Image

    assert {Image.open(out / n).size for n in pngs} == {(256, 256)}  # 64×64 inputs, enlarged
    records = read_jsonl(out / "explanations.jsonl")
    assert [("error" in r) for r in records] == [False, False, True]
    assert "failed (1)" in capsys.readouterr().err
    assert main(argv, transport=service) == 1  # nothing sent again; the old failure still counts
    assert len(read_jsonl(out / "explanations.jsonl")) == 3


# --- min_confidence ------------------------------------------------------------------------------


def test_min_confidence_marks_unsure_answers_in_results_and_records(service, tmp_path, capsys):
    datas = jpegs(4)
    with make_client(service) as client:
        plain = [client.classify(d) for d in datas]
        tops = [r.top1.probability for r in plain]
        least = sorted(tops)[1] + 1e-4  # the two least confident images fall below it
        assert sorted(tops)[2] > least
        want = [t >= least for t in tops]
        assert [r.confident for r in plain] == [None] * 4  # nothing asked, no judgement
        assert [client.classify(d, min_confidence=least).confident for d in datas] == want
        many = client.classify_many(datas, min_confidence=least, batch_size=3)
        assert [r.confident for r in many] == want
        assert [r.predictions for r in many] == [r.predictions for r in plain]
        assert client.explain(datas[0], min_confidence=0.0).confident is True
        maps = list(client.explain_iter(datas, min_confidence=least, batch_size=2))
        assert [r.confident for r in maps] == want
        for bad in (1.5, -0.1, float("nan"), "0.5", True):
            with pytest.raises(ValueError, match="min_confidence must be a number from 0 to 1"):
                client.classify(datas[0], min_confidence=bad)
    paths = write_images(tmp_path / "in", datas)
    out = tmp_path / "results.jsonl"
    args = ["predict", *paths, "--url", URL, "--no-progress", "--min-confidence", repr(least)]
    assert main([*args, "--out", str(out)], transport=service) == 0  # unsure is not a failure
    assert [r["confident"] for r in read_jsonl(out)] == want
    assert "2 below min_confidence (confident: false)" in capsys.readouterr().err
    table = tmp_path / "results.csv"
    assert main([*args, "--out", str(table)], transport=service) == 0
    assert [r["confident"] for r in csv.DictReader(table.open())] == [str(w).lower() for w in want]
    with pytest.raises(SystemExit) as exit_:
        main(["predict", *paths, "--min-confidence", "2"])
    assert exit_.value.code == 2
    assert "must be a probability from 0 to 1, got '2'" in capsys.readouterr().err


def test_a_missing_or_wrong_key_is_a_usage_error_that_names_the_fix(tmp_path, capsys):
    def refuse(request):
        message = "this service needs an API key: send the header Authorization: Bearer <key>"
        return httpx.Response(401, json={"error": {"code": "unauthorized", "message": message}})

    paths = write_images(tmp_path / "in", jpegs(2))
    out = tmp_path / "r.jsonl"
    argv = ["predict", *paths, "--url", URL, "--out", str(out), "--no-progress"]
    assert main(argv, transport=httpx.MockTransport(refuse)) == 2
    err = capsys.readouterr().err
    assert "error: the service refused the API key, or needs one: pass --api-key KEY or set " \
        "TIN_API_KEY" in err  # fmt: skip
    assert "Authorization" not in err


def test_a_non_image_named_by_itself_is_sent_and_recorded_as_failed(service, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    out = tmp_path / "r.jsonl"
    assert main(["predict", str(notes), "--url", URL, "--out", str(out)], transport=service) == 1
    (record,) = read_jsonl(out)
    assert record["error"]["code"] == "not_an_image"
    assert "0 classified, 1 failed" in capsys.readouterr().err

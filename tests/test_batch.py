"""Batch prediction on Ray Data (batch/) on a real Ray cluster: a head and one worker node (1 CPU
each) started on this machine.

Each job is `python -m batch ... --address CLUSTER` in a subprocess, as a user runs it, so the
job can be killed midway. Fixtures: 40 JPEGs in a folder, 20 PNGs found by a glob, a list file
naming a truncated JPEG, a text file called .jpg, an empty .jpg and one PNG a second time, and
the tiny model of tests/serving_fixtures.py (4 classes, top-k 3).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("ray", reason="the batch extra (ray[data]) is not installed")

from batch.pipeline import plan
from batch.sink import read_results
from inference.backend import open_backend, read_card
from inference.preprocess import ImageError, decode
from tests.serving_fixtures import REPO, fixture_images, write_model

TOP_K = 3


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c.address
    c.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[list[str], list[Path], Path]:
    """(command-line inputs, every file they name once, the model)."""
    root = tmp_path_factory.mktemp("batch")
    jpegs, pngs = root / "jpegs", root / "more"
    (jpegs / "sub").mkdir(parents=True)
    pngs.mkdir()
    files = []
    for i, data in enumerate(fixture_images(40)):
        files.append(jpegs / ("sub" if i % 4 == 0 else "") / f"{i:03d}.jpg")
        files[-1].write_bytes(data)
    files.append(jpegs / "notes.txt")  # not an image: a row with its error, not skipped
    files[-1].write_text("a folder's non-image files are error rows\n")
    for i, data in enumerate(fixture_images(20, fmt="PNG")):
        files.append(pngs / f"{i:03d}.png")
        files[-1].write_bytes(data)
    broken = root / "broken"
    broken.mkdir()
    jpeg = fixture_images(1)[0]
    for name, data in (("truncated.jpg", jpeg[: len(jpeg) // 2]), ("text.jpg", b"not an image\n"),
                       ("empty.jpg", b"")):  # fmt: skip
        files.append(broken / name)
        files[-1].write_bytes(data)
    listing = root / "list.txt"
    listing.write_text("\n".join(["# broken files", *map(str, files[-3:]), str(pngs / "000.png")]))
    model = write_model(root / "tiny.onnx", classes=4)
    return [str(jpegs), str(pngs / "*.png"), str(listing)], files, model


def run_job(args: list[str], out: Path, address: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "batch", *args, "--out", str(out), "--address", address,
           "--top-k", str(TOP_K)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO)  # fmt: skip


def finish(proc: subprocess.Popen) -> str:
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out[-3000:]
    return out


def reference(files: list[Path], model: Path) -> dict:
    """What the service's own code answers for each file: decode + the service's backend."""
    backend = open_backend(model)  # the choice the service makes (auto)
    card = read_card(model)
    answers = {}
    for f in files:
        try:
            probs = backend.predict(decode(f.read_bytes())[None])[0]
        except ImageError as e:
            answers[str(f)] = {"code": e.code, "message": e.message}
            continue
        order = np.argsort(-probs, kind="stable")[:TOP_K]  # serving.routes.top_k
        answers[str(f)] = ([card.wnids[i] for i in order], [card.names[i] for i in order],
                           probs[order])  # fmt: skip
    return answers


def check_exactly_once(out: Path, files: list[Path], model: Path) -> None:
    rows = read_results(str(out)).to_pylist()
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(str(f) for f in files)  # each input once, nothing else
    expected = reference(files, model)
    for r in rows:
        want = expected[r["path"]]
        if isinstance(want, dict):
            assert r["error"] == want, r
            assert r["wnids"] is None, r
            continue
        assert r["error"] is None, r
        assert (r["wnids"], r["labels"]) == (want[0], want[1]), r["path"]
        # 1 ulp apart at most: ONNX Runtime's MatMul kernel depends on the batch size (the shipped
        # model gave bit-identical probabilities on 500 val images, batch 64 against 1 and 32).
        np.testing.assert_allclose(r["probabilities"], want[2], rtol=1e-6, atol=1e-7)


def test_every_input_once_with_the_services_answers(cluster, inputs, tmp_path, live_server):
    args, files, model = inputs
    out = tmp_path / "out"
    judged = ["--model", str(model), "--format", "jsonl", "--min-confidence", "0.5"]
    finish(run_job([*args, *judged], out, cluster))
    check_exactly_once(out, files, model)
    # The HTTP service (the same 4-class fixture model) answers the same classes in the same order.
    for r in read_results(str(out)).to_pylist():  # judged by --min-confidence 0.5
        assert r["confident"] is (None if r["error"] else bool(r["probabilities"][0] >= 0.5))
    rows = {r["path"]: r for r in read_results(str(out)).to_pylist() if r["error"] is None}
    some = sorted(rows)[:8]
    upload = [("images", (Path(p).name, Path(p).read_bytes())) for p in some]
    form = {"top_k": TOP_K, "min_confidence": "0.5"}
    answer = httpx.post(f"{live_server.url}/classify_batch", files=upload, data=form)
    for path, result in zip(some, answer.json()["results"], strict=True):
        assert [p["wnid"] for p in result["predictions"]] == rows[path]["wnids"]
        assert result["confident"] is rows[path]["confident"]
        probabilities = [p["probability"] for p in result["predictions"]]
        np.testing.assert_allclose(rows[path]["probabilities"], probabilities, atol=1e-6)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left
    again = finish(run_job([*args, "--model", str(model), "--format", "jsonl"], out, cluster))
    assert '"skipped": 64' in again
    assert '"written": 0' in again


def test_a_killed_job_resumes_exactly_once(cluster, inputs, tmp_path):
    args, files, model = inputs
    out = tmp_path / "out"
    # Small model calls and one row per file, so the first files land long before the job
    # ends; then a crash.
    small = ["--batch-size", "2", "--rows-per-file", "1"]
    proc = run_job([*args, "--model", str(model), *small], out, cluster)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.suffix == ".parquet" for p in out.iterdir()):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    settle(out)  # write tasks already running finish (or die) with the job
    first = len(read_results(str(out)))
    assert 0 < first < len(files), f"the job was not killed midway ({first} rows)"
    log = finish(run_job([*args, "--model", str(model)], out, cluster))
    assert f'"skipped": {first}' in log, log[-2000:]
    check_exactly_once(out, files, model)


def settle(out: Path, quiet: float = 2.0) -> None:
    """Wait until the folder has not changed for `quiet` seconds."""
    last, since = None, time.monotonic()
    while time.monotonic() - since < quiet:
        now = sorted(p.name for p in out.iterdir())
        if now != last:
            last, since = now, time.monotonic()
        time.sleep(0.1)


@pytest.mark.parametrize("cpus", [1, 2, 3, 4, 8, 16, 64])
@pytest.mark.parametrize("actors", [None, 1, 2, 8])
def test_actors_always_leave_a_cpu_for_the_tasks(cpus, actors):
    n, threads, reserve = plan(cpus, actors, None)
    assert n >= 1
    assert threads >= 1
    assert n * reserve <= max(cpus - 1, 0) + 1e-9  # the deadlock on 2 cores reserved them all
    if actors is None:
        assert n * threads <= cpus  # threads add up to the machine, not more
    assert plan(2, None, None) == (2, 1, 0.5)  # 2 cores: 2 single-threaded actors, 1 CPU


def test_every_file_once_and_nothing_that_hangs_or_hides(tmp_path):
    """A folder whose name looks like a glob, a link loop, a second name for a file, a dangling
    link, a FIFO and a non-image: one row each per real file, and no read that blocks."""
    import os
    import signal

    from batch.inputs import list_inputs
    from batch.pipeline import read_and_decode

    photos = tmp_path / "photos [2024]"
    photos.mkdir()
    jpeg, png = fixture_images(1)[0], fixture_images(1, fmt="PNG")[0]
    (photos / "a.jpg").write_bytes(jpeg)
    (photos / "b.png").write_bytes(png)
    (photos / "notes.txt").write_text("not an image")
    os.symlink(".", photos / "loop")
    os.symlink(photos / "a.jpg", photos / "alias.jpg")
    os.symlink(tmp_path / "gone.jpg", photos / "dangling.jpg")
    os.mkfifo(photos / "pipe.jpg")
    got = list_inputs([str(photos), str(photos / "alias.jpg")])
    names = ["a.jpg", "b.png", "dangling.jpg", "notes.txt", "pipe.jpg"]
    assert got == [str(photos / n) for n in names]
    signal.alarm(30)  # a read of the FIFO would block forever: fail instead
    try:
        rows = read_and_decode({"path": got})
    finally:
        signal.alarm(0)
    codes = dict(zip(names, rows["error_code"], strict=True))
    assert codes == {"a.jpg": "", "b.png": "", "dangling.jpg": "unreadable",
                     "notes.txt": "not_an_image", "pipe.jpg": "not_a_file"}  # fmt: skip
    assert list_inputs([str(tmp_path / "photos [2024]" / "b.png")]) == [str(photos / "b.png")]


def gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_killed_jobs_processes_are_reaped_at_once():
    """batch/reaper.py: the job starts a process (as ray.init starts Ray's) and hands it to the
    sentinel; kill -9 of the job takes that process down within seconds, not Ray's minute."""
    job = subprocess.Popen(
        [sys.executable, "-c", (
            "import subprocess, time, psutil\n"
            "from batch import reaper\n"
            "child = subprocess.Popen(['sleep', '120'])\n"
            "reaper.watch([psutil.Process(child.pid)])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(120)\n"
        )],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    child = int(job.stdout.readline())
    assert not gone(child)
    job.kill()
    job.wait(10)
    deadline = time.monotonic() + 10
    while not gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(child)


def test_the_reaper_never_kills_a_process_whose_id_was_reused():
    from batch import reaper

    other = subprocess.Popen(["sleep", "30"])
    try:
        reaper.reap([f"{other.pid} 12345.0\n"])  # the listed process started at another time
        time.sleep(0.2)
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()

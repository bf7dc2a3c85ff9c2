"""The README's quickstart, run as written on a fresh copy of the repository: `make serve` (which
makes its own .venv with only the serve and client extras), then every command of the next
`sh` block and the `python` block, in order, with a real image. So the README cannot drift from
what works again (a quickstart line once failed on a module `make serve` had not installed).
The last block, `make test`, is checked to be there and not run: `.ci/run` runs it, and run
here it would run this test again.

The only liberties: the port (a free one instead of 3000: PORT for make, TIN_URL for the client,
and in the commands that name it), and the files the
README asks the reader to bring (`cat.jpg`, `photos/`): a real val image where TINY_IMAGENET
points at the data, else fixture JPEGs. The fresh install takes 1-2 minutes (pip's cache helps).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.serving_fixtures import REPO, fixture_images, free_port

README = REPO / "README.md"


def blocks(text: str, section: str) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks of a `## section` of the README, in order."""
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, flags=re.S)


def test_the_quickstart_has_the_commands_this_test_runs():
    code = blocks(README.read_text(), "Quickstart")
    assert [lang for lang, _ in code] == ["sh", "sh", "python", "sh"]
    assert code[0][1].split()[:2] == ["make", "serve"]
    assert code[3][1].split()[:2] == ["make", "test"]  # .ci/run runs it; run here, it would recurse


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone would have them (tracked and new, never .venv/...)."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def real_or_fixture_images(n: int) -> list[bytes]:
    zip_path = os.environ.get("TINY_IMAGENET")
    if zip_path and Path(zip_path).is_file():
        with zipfile.ZipFile(zip_path) as z:
            names = sorted(m for m in z.namelist() if "/val/images/" in m and m.endswith("JPEG"))
            return [z.read(m) for m in names[:n]]
    return fixture_images(n)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout  # the first `make serve` installs the venv
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"make serve exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(f"{url}/readyz", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"make serve not ready after {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.mark.skipif(shutil.which("curl") is None, reason="the README uses curl")
def test_the_quickstart_runs_as_written_on_a_fresh_copy(tmp_path):
    (_, serve), (_, commands), (_, python), _ = blocks(README.read_text(), "Quickstart")
    clone = fresh_copy(tmp_path / "clone")
    images = real_or_fixture_images(4)
    (clone / "cat.jpg").write_bytes(images[0])
    (clone / "photos").mkdir()
    for i, data in enumerate(images):
        (clone / "photos" / f"{i}.jpg").write_bytes(data)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "TIN_"))}
    # The port moved: `make serve` reads PORT, the client CLI TIN_URL (its documented override).
    env.update(PORT=str(port), TIN_URL=f"http://localhost:{port}")
    env.update(BENTOML_HOME=str(tmp_path / "bentoml"))
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            serve.split("#")[0].split(), cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, log)
        script = commands.replace("localhost:3000", f"localhost:{port}")
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert '"predictions"' in done.stdout  # the curl classify answer
        assert (clone / "cat-map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len((clone / "results.jsonl").read_text().splitlines()) == len(images)
        assert len(list((clone / "maps").glob("*.png"))) == 2 * len(images)
        code = python.replace("localhost:3000", f"localhost:{port}")
        venv_python = clone / ".venv" / "bin" / "python"
        done = subprocess.run([str(venv_python), "-c", code], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Prediction(rank=1" in done.stdout
        assert (clone / "cat-overlay.png").is_file()
        # The other commands in this venv (serve and client extras only): the extra to install.
        for module, extra in (("batch", "batch"), ("training.train", "train"),
                              ("export", "train,export")):  # fmt: skip
            done = subprocess.run([str(venv_python), "-m", module, "--help"], cwd=clone,
                                  env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
            assert done.returncode == 2, done.stderr[-2000:]
            assert f"pip install -e '.[{extra}]'" in done.stderr
            assert "Traceback" not in done.stderr
    finally:
        stop(server)


def stop(proc: subprocess.Popen) -> None:
    """make, bentoml and its workers (which run in sessions of their own): every process."""
    import psutil  # a dependency of bentoml

    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=30)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def test_what_the_quickstart_writes_is_ignored_by_git():
    """Run in a checkout, the quickstart leaves these behind; a fresh copy must not take them."""
    written = ["cat.jpg", "cat-map.png", "cat-overlay.png", "photos/a.jpg", "results.jsonl",
               "maps/a.1-n01443537.png"]  # fmt: skip
    done = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=REPO,
                          capture_output=True, text=True)  # fmt: skip
    assert done.stdout.split() == written


def test_the_reproduce_commands_run_as_written_on_the_fixture_zip(tmp_path, tiny_zip):
    """The training, slimming, export and evaluation commands of "Reproduce the shipped model",
    in order, in a fresh copy. The liberties: the fixture zip for the data, the `smoke` preset
    for `final` (seconds on a CPU instead of minutes on a GPU), and no `--int8` (the INT8 bar is
    for a trained model: on a 2-epoch one a single flipped image misses it; tests/test_export.py
    checks the INT8 forms on their own)."""
    import sys

    code = next(c for _, c in blocks(README.read_text(), "Reproduce the shipped model")
                if "training.train" in c)  # fmt: skip
    script = code.replace("\\\n", " ").replace("--preset final", "--preset smoke")
    script = script.replace("tiny-imagenet-200.zip", str(tiny_zip)).replace(" --int8", "")
    lines = [line.split("  #")[0].strip() for line in script.splitlines()]
    clone = fresh_copy(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `python`: this venv
    env["TINY_IMAGENET_CACHE"] = str(tmp_path / "cache")
    for line in filter(None, lines):
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    from inference.backend import read_card

    assert read_card(clone / "models" / "model.onnx").preset == "smoke"
    assert (clone / "models" / "model.pt").is_file()
    assert json.loads(done.stdout.splitlines()[0])["images"] == 16  # the evaluation, on val


def test_the_batch_command_on_the_val_images_runs_as_written(tmp_path, tiny_root):
    """`python -m batch tiny-imagenet-200/val/images --out preds/` of "Beyond one machine", on
    the fixture's val images (the only liberty), and the README's pandas check of its output."""
    import sys

    text = README.read_text()
    command = re.search(r"`(python -m batch tiny-imagenet-200/val/images --out preds/)`", text)[1]
    snippet = next(c for lang, c in blocks(text, "Beyond one machine") if lang == "python")
    clone = fresh_copy(tmp_path / "clone")
    (clone / "tiny-imagenet-200").symlink_to(tiny_root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1])["written"] == 16
    done = subprocess.run([sys.executable, "-c", snippet], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("%")  # the top-1 of the rows against the labels


def test_the_torchrun_command_runs_as_written_on_the_fixture_zip(tmp_path, tiny_zip):
    """The single-machine `torchrun` line of "Beyond one machine" (two CPU processes on gloo,
    the smoke preset), in a fresh copy, on the fixture zip (the only liberty); tests/test_ddp.py
    checks what the ranks agree on."""
    import sys

    code = next(c for _, c in blocks(README.read_text(), "Beyond one machine") if "torchrun" in c)
    line = next(x for x in code.splitlines() if x.startswith("torchrun --nproc_per_node=2 "))
    clone = fresh_copy(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIN_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # this venv's torchrun
    env["TINY_IMAGENET_CACHE"] = str(tmp_path / "cache")
    command = line.replace("tiny-imagenet-200.zip", str(tiny_zip))
    done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    assert (clone / "runs" / "ddp" / "last.pt").is_file()

"""Models in BentoML's model store (serving/store.py): saving, serving by tag, and `bentoml build`
packaging the stored model as a model. Each test uses a BENTOML_HOME of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serving.config import is_store_tag
from serving.store import labels_and_metadata, version_for
from tests.serving_fixtures import REPO, Server, fixture_card, write_model

BIN = Path(sys.executable).parent


def run(command: list[str], home: Path, **env) -> str:
    """A CLI in the repo root with its own BENTOML_HOME, and a `uv` that fails: `bentoml build`
    would otherwise pip-install uv into this venv when it needs it."""
    shim = home / "shim"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "uv").write_text("#!/bin/sh\necho 'uv called' >&2; exit 1\n")
    (shim / "uv").chmod(0o755)
    full_env = {
        **os.environ,
        "BENTOML_HOME": str(home),
        "BENTOML_DO_NOT_TRACK": "True",
        "PATH": f"{shim}:{os.environ['PATH']}",
        **env,
    }
    done = subprocess.run(
        command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def save(home: Path, model: Path, *extra: Path, name: str = "tiny-imagenet-resnet") -> str:
    command = [sys.executable, "-m", "serving.store", str(model), "--name", name]
    for p in extra:
        command += ["--extra", str(p)]
    return run(command, home).strip().splitlines()[-1]


def test_what_counts_as_a_tag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_store_tag("tiny-imagenet-resnet")
    assert is_store_tag("tiny-imagenet-resnet:latest")
    assert is_store_tag("tiny-imagenet-resnet:final-9d4d00d0")
    for path in ("models/model.onnx", "model.onnx", "./x", "/abs/path", "", "Upper:Case"):
        assert not is_store_tag(path), path
    (tmp_path / "plainfile").write_text("")
    assert not is_store_tag("plainfile")  # an existing file stays a file


def test_version_and_labels_come_from_the_card():
    card = fixture_card(4, preset="ResNet 34/e", val_top1=0.6464, precision="int8")
    assert version_for(card, "ab" * 32) == "resnet-34-e-abababab"
    final = version_for(fixture_card(4, preset="final"), "ab" * 32)
    assert f"tiny-imagenet-resnet:{final}" == "tiny-imagenet-resnet:final-abababab"  # shown whole
    assert version_for(fixture_card(4, preset=None), "cd" * 32) == "model-cdcdcdcd"
    labels, metadata = labels_and_metadata(card, "ab" * 32, ["model.onnx"])
    assert labels["val_top1"] == "0.6464"
    assert labels["classes"] == "4"
    assert all(isinstance(v, str) for v in labels.values())  # BentoML refuses other labels
    assert metadata["onnx_sha256"] == "ab" * 32
    assert "wnids" not in metadata  # the class lists stay in the file


def test_save_with_extras_is_listed_and_idempotent(tmp_path):
    home = tmp_path / "home"
    model = write_model(tmp_path / "tiny.onnx")
    (tmp_path / "README.md").write_text("# card\n")
    int8 = write_model(tmp_path / "model.int8.onnx", card=fixture_card(4, precision="int8"))
    tag = save(home, model, int8, tmp_path / "README.md")
    assert tag == "tiny-imagenet-resnet:fixture-" + tag[-8:]
    assert save(home, model) == tag  # the same file: the same version, nothing new
    listed = json.loads(run([str(BIN / "bentoml"), "models", "list", "-o", "json"], home))
    assert [m["tag"] for m in listed] == [tag]
    info = json.loads(run([str(BIN / "bentoml"), "models", "get", tag, "-o", "json"], home))
    assert info["labels"]["val_top1"] == "0.5000"
    assert info["labels"]["preset"] == "fixture"
    assert info["metadata"]["files"] == ["model.onnx", "model.int8.onnx", "README.md"]
    folder = home / "models" / "tiny-imagenet-resnet" / tag.split(":")[1]
    assert (folder / "model.onnx").read_bytes() == model.read_bytes()
    assert (folder / "model.int8.onnx").is_file()


def test_a_file_that_is_not_an_export_is_refused(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    done = subprocess.run(
        [sys.executable, "-m", "serving.store", str(tmp_path / "junk.onnx")],
        cwd=REPO,
        env={**os.environ, "BENTOML_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "not a readable ONNX model" in done.stderr
    assert not (tmp_path / "home" / "models" / "tiny-imagenet-resnet").exists()


def test_serve_a_stored_model_by_tag(tmp_path):
    home = tmp_path / "home"
    tag = save(home, write_model(tmp_path / "tiny.onnx"))
    with Server("tiny-imagenet-resnet:latest", tmp_path, env={"BENTOML_HOME": str(home)}) as s:
        model = httpx.get(f"{s.url}/model").json()
        assert model["name"] == tag
        assert model["val_top1"] == 0.5
    with pytest.raises(RuntimeError, match="neither a file nor a model"):
        Server("no-such-model:v1", tmp_path, env={"BENTOML_HOME": str(home)}).start(timeout=60)


def bento_models(home: Path, bentofile: Path, model: str) -> list[str]:
    """`bentoml build` with TIN_MODEL=`model`: the models the Bento's services declare."""
    out = run(
        [str(BIN / "bentoml"), "build", "-f", str(bentofile), "--output", "tag"],
        home,
        TIN_MODEL=model,
    )
    tag = out.strip().splitlines()[-1].removeprefix("__tag__:")
    info = json.loads(run([str(BIN / "bentoml"), "get", tag, "-o", "json"], home))
    return [m["tag"] for s in info["services"] for m in s["models"]]


def test_build_packages_the_stored_model_as_a_model(tmp_path):
    home = tmp_path / "home"
    tag = save(home, write_model(tmp_path / "tiny.onnx"))
    # bentofile.yaml without locking (which needs uv and the package index)
    text = (REPO / "bentofile.yaml").read_text()
    bentofile = tmp_path / "bentofile.yaml"
    bentofile.write_text(text.replace("python:\n", "python:\n  lock_packages: false\n"))
    # pinned to the version `latest` named at build time, and no ONNX file as source
    assert bento_models(home, bentofile, "tiny-imagenet-resnet:latest") == [tag]
    assert not list((home / "bentos").rglob("*.onnx"))
    assert bento_models(home, bentofile, str(tmp_path / "tiny.onnx")) == []  # a file: no model

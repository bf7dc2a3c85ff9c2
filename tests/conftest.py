"""Shared fixtures: a small synthetic Tiny ImageNet in the official layout, as folder and zip."""

import os
import shutil
from pathlib import Path

import pytest

from training.fixtures import write_fixture, zip_folder


@pytest.fixture(autouse=True)
def _private_cache(request, tmp_path, monkeypatch):
    # Never read or write the user's cache from a test, except the real-data ones: decoding the
    # real set takes ~30 s on 2 cores, and its cache is keyed by content, so sharing it is safe.
    if request.node.get_closest_marker("real_data") is None:
        monkeypatch.setenv("TINY_IMAGENET_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """tiny-imagenet-200/ with 4 classes, 12 train and 4 val images each. Do not modify."""
    return write_fixture(tmp_path_factory.mktemp("fixture"), classes=4, train=12, val=4)


@pytest.fixture(scope="session")
def tiny_zip(tiny_root) -> Path:
    return zip_folder(tiny_root, tiny_root.parent / "tiny-imagenet-200.zip")


@pytest.fixture
def tiny_copy(tiny_root, tmp_path) -> Path:
    """A private copy of the fixture folder, for tests that break it."""
    return Path(shutil.copytree(tiny_root, tmp_path / "copy" / "tiny-imagenet-200"))


@pytest.fixture(scope="session")
def real_zip() -> Path:
    path = os.environ.get("TINY_IMAGENET")
    if not path:
        pytest.skip(
            "set TINY_IMAGENET=/path/to/tiny-imagenet-200.zip to run tests on the real data"
        )
    return Path(path)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory):
    """`bentoml serve` on a 4-class fixture model, one per test module (tests/serving_fixtures.py
    Server: it can also be killed and restarted on the same port)."""
    pytest.importorskip("onnx")
    from tests.serving_fixtures import Server, write_model

    workdir = tmp_path_factory.mktemp("live")
    with Server(write_model(workdir / "tiny.onnx", classes=4), workdir) as running:
        yield running

"""Small ONNX models that follow inference/contract.py, and `bentoml serve` on them, for the serving
and client tests.

The graph has the exported model's interface without its size: uint8 NHWC `image` → float →
(x - mean) / std → 8×8 average pooling → a fixed random linear layer → `logits` → softmax →
`probabilities`, and the export's activation maps `cam` (N, C, 8, 8) added by export/graph.py as
for a real export (mean(cam) + bias = logits). It is deterministic and sees colour and layout, so
a wrong channel order or a wrong resize changes its answers, and it builds and loads in
milliseconds. Needs the `onnx` package (the export extra), which tests may use and serving must
not.

    from tests.serving_fixtures import write_model, fixture_images
    path = write_model(tmp_path / "tiny.onnx", classes=4)
    with Server(path, tmp_path) as server:  # `bentoml serve` on it
        ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from inference.contract import (
    IMAGE_SIZE,
    INPUT_NAME,
    OUTPUT_LOGITS,
    OUTPUT_PROBABILITIES,
    ModelCard,
)
from training.fixtures import class_list, synthetic_image

REPO = Path(__file__).resolve().parent.parent

POOL = 8  # 64×64 → 8×8 cells per channel: 192 features
MEAN = (122.46, 114.26, 101.36)  # the real training set's, as the export writes them
STD = (70.49, 68.56, 71.81)


def fixture_card(classes: int = 4, **overrides) -> ModelCard:
    """A model card like the export's, with the fixture classes' wnids and names."""
    pairs = class_list(classes)
    fields = {
        "wnids": tuple(w for w, _ in pairs),
        "names": tuple(n.split(",")[0] for _, n in pairs),  # words.txt's first name
        "mean": MEAN,
        "std": STD,
        "preset": "fixture",
        "checkpoint_sha256": "0" * 64,
        "precision": "fp32",
        "model_config": {"arch": "linear-probe", "classes": classes},
        "val_top1": 0.5,
        "val_top5": 0.9,
        "val_images": 16,
        "exported_at": "2026-01-01T00:00:00Z",
        "versions": {"onnx": "fixture", "onnxruntime": "fixture"},
    }
    fields.update(overrides)
    return ModelCard(**fields)


def _parameters(classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = 3 * POOL * POOL
    weight = rng.normal(0, 1 / np.sqrt(features), (features, classes)).astype(np.float32)
    bias = rng.normal(0, 0.1, classes).astype(np.float32)
    return weight, bias


def build_model(classes: int = 4, seed: int = 0, card: ModelCard | None = None, cam: bool = True):
    """The onnx.ModelProto (imported lazily: only the tests that build models need onnx)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    card = card or fixture_card(classes)
    weight, bias = _parameters(len(card.wnids), seed)
    features = len(weight)
    cell = IMAGE_SIZE // POOL
    inits = [
        numpy_helper.from_array(np.array(card.mean, np.float32), "mean"),
        numpy_helper.from_array(np.array(card.std, np.float32), "std"),
        numpy_helper.from_array(weight, "weight"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array([-1, features], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], ["normed"]),
        helper.make_node("Transpose", ["normed"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "AveragePool", ["nchw"], ["pooled"], kernel_shape=[cell, cell], strides=[cell, cell]
        ),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "weight"], ["scores"]),
        helper.make_node("Add", ["scores", "bias"], [OUTPUT_LOGITS]),
        helper.make_node("Softmax", [OUTPUT_LOGITS], [OUTPUT_PROBABILITIES], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_imagenet_fixture",
        [
            helper.make_tensor_value_info(
                INPUT_NAME, TensorProto.UINT8, ["N", IMAGE_SIZE, IMAGE_SIZE, 3]
            )
        ],
        [
            helper.make_tensor_value_info(OUTPUT_LOGITS, TensorProto.FLOAT, ["N", classes]),
            helper.make_tensor_value_info(OUTPUT_PROBABILITIES, TensorProto.FLOAT, ["N", classes]),
        ],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="tests.serving_fixtures"
    )
    model.ir_version = 8  # what ONNX Runtime releases of the last years all read
    onnx.checker.check_model(model)
    if cam:
        from export.graph import add_cam

        model = add_cam(model)
        card = dataclasses.replace(card, cam_size=(POOL, POOL))
    del model.metadata_props[:]
    helper.set_model_props(model, card.to_metadata())
    return model


def write_model(
    path: str | Path, classes: int = 4, seed: int = 0, card: ModelCard | None = None, cam=True
) -> Path:
    """Write a fixture model to `path` (its stem is the name the service reports)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_model(classes, seed, card, cam), str(path))
    return path


def reference_logits(images: np.ndarray, classes: int = 4, seed: int = 0) -> np.ndarray:
    """The fixture model's logits computed with numpy."""
    card = fixture_card(classes)
    weight, bias = _parameters(classes, seed)
    x = (images.astype(np.float32) - np.float32(card.mean)) / np.float32(card.std)
    cell = IMAGE_SIZE // POOL
    n = len(images)
    pooled = x.reshape(n, POOL, cell, POOL, cell, 3).mean(axis=(2, 4))  # (n, 8, 8, 3)
    return pooled.transpose(0, 3, 1, 2).reshape(n, len(weight)) @ weight + bias


def reference_probabilities(images: np.ndarray, classes: int = 4, seed: int = 0) -> np.ndarray:
    """The fixture model's output computed with numpy, to check a backend against."""
    logits = reference_logits(images, classes, seed)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fixture_array(label: int = 0, classes: int = 4, seed: int = 0) -> np.ndarray:
    """A 64×64×3 uint8 image like the training fixture's."""
    return synthetic_image(label, classes, np.random.default_rng(seed))


def encode(img: np.ndarray | Image.Image, fmt: str = "JPEG", **save_args) -> bytes:
    """An image file's bytes; JPEG at quality 90 as the training fixture writes them."""
    im = img if isinstance(img, Image.Image) else Image.fromarray(img)
    if fmt == "JPEG":
        save_args.setdefault("quality", 90)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def fixture_images(n: int = 4, classes: int = 4, fmt: str = "JPEG") -> list[bytes]:
    """`n` encoded fixture images cycling through the classes."""
    return [encode(fixture_array(i % classes, classes, seed=i), fmt) for i in range(n)]


# --- the real server ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`bentoml serve` of `model` on a loopback port, from the repo root as `make serve` runs it,
    in its own process group (its workers go with it). start() again after stop() reuses the port:
    the same URL, as a restarted service has.

        with Server(path, tmp_path) as server:
            httpx.get(server.url + "/labels")
    """

    def __init__(
        self, model: Path | str, workdir: Path, env: dict | None = None, target: str | None = None
    ):
        """`model`: TIN_MODEL (a file, or a tag in the model store); `target`: what to serve
        (serving/service.py's Classifier by bentofile.yaml, or e.g. tests.native_caller:Caller)."""
        self.target = target
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(workdir) / "serve.log"
        # Not the settings an in-process app of the same test module may have set meanwhile.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("TIN_")}
        inherited.pop("BENTOML_CONFIG_OPTIONS", None)
        self.env = {
            **inherited,
            "TIN_MODEL": str(model),
            "BENTOML_HOME": str(Path(workdir) / "bentoml"),
            "TIN_BATCH_MAX_LATENCY_MS": "30000",  # a busy CI machine must not shed requests
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> Server:
        bentoml = Path(sys.executable).parent / "bentoml"
        command = [str(bentoml), "serve", *([self.target] if self.target else [])]
        command += ["--port", str(self.port), "--host", "127.0.0.1"]
        with self.log.open("a") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop(signal.SIGKILL)
                raise RuntimeError(f"bentoml serve did not get ready:\n{self.log_tail()}")
            time.sleep(0.2)
        return self

    def ready(self) -> bool:
        try:
            return urllib.request.urlopen(self.url + "/readyz", timeout=2).status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: BentoML's graceful shutdown. SIGKILL: a crash of the whole service, no answer
        in flight sent. BentoML starts each worker in a session of its own, so the workers are
        signalled by pid: a process-group kill would leave them serving on the port."""
        if self.proc is None:
            return
        import psutil  # a dependency of bentoml

        try:
            arbiter = psutil.Process(self.proc.pid)
            workers = arbiter.children(recursive=True)
        except psutil.NoSuchProcess:  # it exited by itself (a start that failed)
            self.proc.wait()
            self.proc = None
            return
        for p in [arbiter, *workers] if sig == signal.SIGKILL else [arbiter]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(sig)
        _, alive = psutil.wait_procs([arbiter, *workers], timeout=20)
        for p in alive:  # a shutdown that hangs
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait()
        self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

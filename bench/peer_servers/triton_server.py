"""Triton Inference Server (through PyTriton) on the same model, decode and engine as the service,
for bench/peers.py.

    PYTHONPATH=REPO python -m bench.peer_servers.triton_server MODEL HTTP_PORT  (Triton's venv)

Triton's HTTP front speaks the KServe v2 inference protocol, which carries tensors, not uploads:
the model `classify` takes one BYTES tensor `image` of shape (1,) per request, the encoded image
file itself, and decodes it in Python with inference.preprocess.decode, so Triton receives the
same JPEG bytes as the other servers, in a binary-tensor request (POST
/v2/models/classify/infer: a JSON header, then the tensor's 4-byte length and the bytes; see
bench/peers.py). Predicted with inference.backend.open_backend (`auto`); Triton's dynamic
batcher merges up to 32 requests with at most 2 ms of queueing. Answers the top-5 indices
(INT64) and probabilities (FP32). Readiness: GET /v2/health/ready is 200.

PyTriton's Python-model stub links against libpython of the Python that runs this script
(3.12 for PyTriton 0.7's bundled server), found through LD_LIBRARY_PATH: its lib/ directory is
put first there before Triton starts.
"""

from __future__ import annotations

import os
import sys
import sysconfig

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from inference.backend import open_backend
from inference.preprocess import decode


def with_libpython() -> None:
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [libdir, *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
    os.environ["LD_LIBRARY_PATH"] = ":".join(dict.fromkeys(paths))


def classifier(model: str):
    backend = open_backend(model, max_batch=32)
    backend.warm_up()

    @batch
    def infer(image: np.ndarray) -> dict:
        x = np.stack([decode(bytes(row[0])) for row in image])
        probs = backend.predict(x)
        top = np.argsort(probs, axis=1)[:, ::-1][:, :5]
        return {
            "index": top.astype(np.int64),
            "probability": np.take_along_axis(probs, top, 1).astype(np.float32),
        }

    return infer


def serve(model: str, http_port: int) -> None:
    with_libpython()
    # gRPC and metrics on the next two ports (bench/peers.py checks all three are free).
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=http_port,
        grpc_address="127.0.0.1",
        grpc_port=http_port + 1,
        metrics_port=http_port + 2,
        log_verbose=0,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="classify",
            infer_func=classifier(model),
            inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
            outputs=[
                Tensor(name="index", dtype=np.int64, shape=(5,)),
                Tensor(name="probability", dtype=np.float32, shape=(5,)),
            ],
            config=ModelConfig(
                max_batch_size=32,
                batcher=DynamicBatcher(max_queue_delay_microseconds=2000),
            ),
            strict=True,
        )
        triton.serve()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))

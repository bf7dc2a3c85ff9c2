"""LitServe on the same model, decode and engine as the service, for bench/peers.py.

    PYTHONPATH=REPO python -m bench.peer_servers.litserve_server MODEL PORT   (LitServe's venv)

POST /classify with the image itself as the body (Content-Type image/jpeg): decode_request's
parameter is a FastAPI `bytes` body, so LitServe hands the bytes through untouched (its default
parameter would parse JSON or a form). Decoded with inference.preprocess.decode, predicted with
inference.backend.open_backend (`auto`); batches of up to 32 with a 2 ms batching timeout
(LitServe's documented way to batch), one worker. Answers the top-5 indices and probabilities.
Readiness: GET /health is 200 once the worker has set up.

No `from __future__ import annotations` here: LitServe hands decode_request's annotation to
FastAPI as it finds it, and a string would make the body a query parameter.
"""

import sys
from typing import Annotated

import litserve as ls
import numpy as np
from fastapi import Body

from inference.backend import open_backend
from inference.preprocess import decode

ImageBody = Annotated[bytes, Body(media_type="image/jpeg")]


class Classify(ls.LitAPI):
    def __init__(self, model: str):
        super().__init__(max_batch_size=32, batch_timeout=0.002, api_path="/classify")
        self.model = model

    def setup(self, device):
        self.backend = open_backend(self.model, max_batch=32)
        self.backend.warm_up()

    def decode_request(self, request: ImageBody):
        return decode(request)

    def batch(self, inputs):
        return np.stack(inputs)

    def predict(self, x):
        return self.backend.predict(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, probs):
        top = np.argsort(probs)[::-1][:5]
        return {"predictions": [{"index": int(i), "probability": float(probs[i])} for i in top]}


if __name__ == "__main__":
    model, port = sys.argv[1], int(sys.argv[2])
    server = ls.LitServer(Classify(model), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False)

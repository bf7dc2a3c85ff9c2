"""LitServe on the same model, decode and engine as the service, for bench/peers.py.

    PYTHONPATH=REPO python -m bench.peer_servers.litserve_server MODEL PORT   (LitServe's venv)

POST /classify with a multipart field `image`; batches of up to 32 with LitServe's 2 ms batching
timeout (its documented way to batch), one worker. Answers the top-5 indices and probabilities.
"""

from __future__ import annotations

import sys

import litserve as ls
import numpy as np

from inference.backend import open_backend
from inference.preprocess import decode


class Classify(ls.LitAPI):
    def __init__(self, model: str):
        super().__init__(max_batch_size=32, batch_timeout=0.002, api_path="/classify")
        self.model = model

    def setup(self, device):
        self.backend = open_backend(self.model, max_batch=32)
        self.backend.warm_up()

    def decode_request(self, request):
        return decode(request["image"].file.read())

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
    ls.LitServer(Classify(model), accelerator="cpu", workers_per_device=1).run(port=port)

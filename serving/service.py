"""The BentoML service: `bentoml serve` (from the repo root) or `bentoml build` serve this.

Two services, as BentoML's adaptive batching needs them:

- `Classifier` (public, port 3000) owns the HTTP API (serving/routes.py, mounted as an ASGI app):
  it parses and checks the request, decodes images and formats the answer.
- `TinyImageNetModel` (internal, its own process under `bentoml serve`) holds the ONNX Runtime
  session behind one batchable method. A batchable API takes a single batched argument, so
  `top_k` and the per-image errors stay outside it: the public service sends only the decoded
  (N, 64, 64, 3) arrays, and BentoML merges the arrays of concurrent requests into one model call
  of at most TIN_BATCH_MAX_SIZE images.

When the service runs in-process (tests, `bentoml serve --development`) the inner service is an
ordinary object in the same process and nothing is batched across requests.
"""

from __future__ import annotations

import logging

import aiohttp
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable

from serving import config, openapi
from serving.backend import OnnxBackend, read_card
from serving.routes import app as http_app

log = logging.getLogger("bentoml.tin")  # BentoML prints its own loggers

BATCH_MAX_SIZE = config.batch_max_size()
BATCH_MAX_LATENCY_MS = config.batch_max_latency_ms()
RETRIES = 2


# BentoML 1.4.39's client to this service renews its connection pool every 100 calls or 5 min
# by closing the old one, which fails the calls still in flight on it ("Server disconnected"):
# under load, a few percent of requests. Renewal only matters for remote replicas; this one is a
# local socket, so it is pushed out of reach (Classifier.probabilities also retries).
NO_RENEWAL = {"max_requests": 10**12, "max_age": 10.0**12}


@bentoml.service(
    name="TinyImageNetModel", workers=1, traffic={"timeout": 120}, runner_connection=NO_RENEWAL
)
class TinyImageNetModel:
    """The model behind adaptive batching; loaded and warmed up before the server is ready."""

    def __init__(self):
        self.backend = OnnxBackend(config.settings().model_path, max_batch=BATCH_MAX_SIZE)
        self.backend.warm_up()  # runs before the server listens, so /readyz implies warm

    @bentoml.api(batchable=True, max_batch_size=BATCH_MAX_SIZE, max_latency_ms=BATCH_MAX_LATENCY_MS)
    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, 64, 64, 3) RGB → probabilities (N, C) float32."""
        return self.backend.predict(images)

    @bentoml.api
    def backend_info(self) -> dict:
        return self.backend.info


@bentoml.asgi_app(http_app)
@bentoml.service(name="Classifier", workers=1, traffic={"timeout": 120})
class Classifier:
    """Top-k Tiny ImageNet predictions over HTTP; the routes are in serving/routes.py."""

    model = bentoml.depends(TinyImageNetModel)

    def __init__(self):
        self.settings = config.settings()
        self.name = self.settings.model_name
        # The card (labels, accuracy) from the file's metadata: the routes need it on every
        # request, and reading it here needs no call into the other process.
        self.card = read_card(self.settings.model_path)
        _ = self.model  # in-process: load and warm the model now, not on the first request
        log.info(
            "Classifier: model %s (%d classes), uploads up to %d bytes, %d images per batch",
            self.name,
            len(self.card.wnids),
            self.settings.max_upload_bytes,
            self.settings.max_batch_images,
        )

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        # A connection to the model process can still drop under us (a keep-alive connection
        # closed by the server as it is reused); the call is idempotent, so try again.
        for attempt in range(RETRIES + 1):
            try:
                return await self.model.to_async.predict(images)
            except aiohttp.ClientConnectionError as e:
                log.warning("model call failed (%s), attempt %d", e, attempt + 1)
        raise ServiceUnavailable("the model process cannot be reached")

    async def backend_info(self) -> dict:
        return await self.model.to_async.backend_info()

    def openapi(self) -> dict:
        """/docs.json: BentoML's document describes neither the mounted routes nor their
        errors (serving/openapi.py)."""
        return openapi.document(Classifier.openapi_spec.asdict(), self.settings.max_batch_images)

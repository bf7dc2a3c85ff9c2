"""The BentoML service: `bentoml serve` (from the repo root) or `bentoml build` serve this.

Two services, as BentoML's adaptive batching needs them:

- `Classifier` (public, port 3000) owns the HTTP API: the routes of serving/routes.py (mounted as
  an ASGI app: the curl forms, the demo page) and the BentoML-native APIs under /api/ (for
  bentoml.SyncHTTPClient and bentoml.depends). It parses and checks requests, decodes images and
  formats the answers.
- `TinyImageNetModel` (internal, its own process under `bentoml serve`) holds the chosen engine
  (serving/backend.py: ONNX Runtime or OpenVINO, fp32 or INT8) behind two batchable methods. A
  batchable API takes a single batched argument, so `top_k` and the per-image errors stay
  outside it: the public service sends only the decoded (N, 64, 64, 3) arrays, and BentoML merges
  the arrays of concurrent requests into one model call of at most TIN_BATCH_MAX_SIZE images.

When the service runs in-process (tests, `bentoml serve --development`) the inner service is an
ordinary object in the same process and nothing is batched across requests.
"""

from __future__ import annotations

import logging
from pathlib import Path

import aiohttp
import bentoml
import numpy as np
from bentoml.exceptions import ServiceUnavailable

from serving import auth, config, openapi, traffic
from serving.answers import Ask
from serving.backend import open_backend, read_card
from serving.native import (
    BatchClassification,
    BatchExplanation,
    Classification,
    Explanation,
    NativeErrors,
    ServerErrors,
    TopK,
    Wnid,
    api_errors,
)
from serving.routes import app as http_app
from serving.routes import (
    check_count,
    class_ask,
    classify_many,
    classify_one,
    explain_many,
    explain_one,
)

log = logging.getLogger("bentoml.tin")  # BentoML prints its own loggers
traffic.install()  # BentoML's request timeout, with its timer cancelled (serving/traffic.py)

MODEL_TAG = config.settings().model_tag  # TIN_MODEL as name:version, when it is a stored model
BATCH_MAX_SIZE = config.batch_max_size()
BATCH_MAX_LATENCY_MS = config.batch_max_latency_ms()
RETRIES = 2
BATCHING = {
    "batchable": True,
    "max_batch_size": BATCH_MAX_SIZE,
    "max_latency_ms": BATCH_MAX_LATENCY_MS,
}


# BentoML 1.4.39's client to this service renews its connection pool every 100 calls or 5 min
# by closing the old one, which fails the calls still in flight on it ("Server disconnected"):
# under load, a few percent of requests. Renewal only matters for remote replicas; this one is a
# local socket, so it is pushed out of reach (Classifier._call also retries).
NO_RENEWAL = {"max_requests": 10**12, "max_age": 10.0**12}


@bentoml.service(
    name="TinyImageNetModel", workers=1, traffic={"timeout": 120}, runner_connection=NO_RENEWAL
)
class TinyImageNetModel:
    """The model behind adaptive batching; loaded and warmed up before the server is ready."""

    if MODEL_TAG:
        # Declared, so that `bentoml build` packages the stored model as a model of the Bento
        # (_bentoml_sdk/service/factory.py collects Model class attributes into `models`); a
        # file given as TIN_MODEL is not a model to BentoML and travels as a source file, if
        # bentofile.yaml includes it.
        stored_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self):
        s = config.settings()
        self.backend = open_backend(
            s.model_path, s.backend, s.precision, max_batch=BATCH_MAX_SIZE, threads=s.threads
        )
        self.backend.warm_up()  # runs before the server listens, so /readyz implies warm

    @bentoml.api(**BATCHING)
    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, 64, 64, 3) RGB → probabilities (N, C) float32."""
        return self.backend.predict(images)

    @bentoml.api(**BATCHING)
    def explain(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, 64, 64, 3) → (N, 2C + C·h·w) float32: probabilities, logits and the flat
        activation maps side by side (a batchable API answers one array, split by the caller)."""
        probs, logits, cam = self.backend.explain(images)
        return np.concatenate([probs, logits, cam.reshape(len(cam), -1)], axis=1)

    @bentoml.api
    def backend_info(self) -> dict:
        return self.backend.info


@bentoml.asgi_app(http_app)
@bentoml.service(name="Classifier", workers=1, traffic={"timeout": 120})
class Classifier:
    """Top-k Tiny ImageNet predictions and their activation maps over HTTP."""

    model = bentoml.depends(TinyImageNetModel)

    def __init__(self):
        self.settings = config.settings()
        self.name = self.settings.model_name
        # The card (labels, accuracy, map size) from the file's metadata: the routes need it on
        # every request, and reading it here needs no call into the other process.
        self.card = read_card(self.settings.model_path)
        self.api_keys_on = bool(auth.api_keys())
        _ = self.model  # in-process: load and warm the model now, not on the first request
        log.info(
            "Classifier: model %s (%d classes), uploads up to %d bytes, %d images per batch%s",
            self.name,
            len(self.card.wnids),
            self.settings.max_upload_bytes,
            self.settings.max_batch_images,
            ", API keys required" if self.api_keys_on else "",
        )

    async def _call(self, method: str, images: np.ndarray) -> np.ndarray:
        # A connection to the model process can still drop under us (a keep-alive connection
        # closed by the server as it is reused); the call is idempotent, so try again.
        for attempt in range(RETRIES + 1):
            try:
                return await getattr(self.model.to_async, method)(images)
            except aiohttp.ClientConnectionError as e:
                log.warning("model call failed (%s), attempt %d", e, attempt + 1)
        raise ServiceUnavailable("the model process cannot be reached")

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        return await self._call("predict", images)

    async def explanations(self, images: np.ndarray):
        """(probabilities (N, C), logits (N, C), cam (N, C, h, w)) of uint8 images."""
        flat = await self._call("explain", images)
        classes, (h, w) = len(self.card.wnids), self.card.cam_size
        cam = flat[:, 2 * classes :].reshape(len(flat), classes, h, w)
        return flat[:, :classes], flat[:, classes : 2 * classes], cam

    async def backend_info(self) -> dict:
        return await self.model.to_async.backend_info()

    # --- BentoML-native APIs (serving/native.py): for bentoml.SyncHTTPClient and friends -------

    @bentoml.api(route="/api/classify")
    @api_errors
    async def classify(self, image: Path, top_k: TopK = config.DEFAULT_TOP_K) -> Classification:
        """Classify one image (multipart field `image`); the top_k most probable classes."""
        # BentoML wrote the upload to a request temp file; NativeErrors has checked its size.
        return Classification(**await classify_one(self, image.read_bytes(), top_k))

    @bentoml.api(route="/api/classify_batch")
    @api_errors
    async def classify_batch(
        self, images: list[Path], top_k: TopK = config.DEFAULT_TOP_K
    ) -> BatchClassification:
        """Classify several images, in order; an unreadable one gets an error in its place."""
        self._check_count(images)
        data = [p.read_bytes() for p in images]
        return BatchClassification(**await classify_many(self, data, top_k))

    @bentoml.api(route="/api/explain")
    @api_errors
    async def explain(
        self, image: Path, top_k: TopK = config.DEFAULT_EXPLAIN_TOP_K, wnid: Wnid | None = None
    ) -> Explanation:
        """The activation maps of the top_k classes, or of the class `wnid` (GET /labels)."""
        body, _ = await explain_one(self, image.read_bytes(), self._ask(top_k, wnid))
        return Explanation(**body)

    @bentoml.api(route="/api/explain_batch")
    @api_errors
    async def explain_batch(
        self,
        images: list[Path],
        top_k: TopK = config.DEFAULT_EXPLAIN_TOP_K,
        wnid: Wnid | None = None,
    ) -> BatchExplanation:
        """/api/explain for several images, in order; an unreadable one gets an error."""
        self._check_count(images)
        data = [p.read_bytes() for p in images]
        return BatchExplanation(**await explain_many(self, data, self._ask(top_k, wnid)))

    def _ask(self, top_k: int, wnid: str | None) -> Ask:
        return Ask(top_k=top_k) if wnid is None else class_ask(wnid, self.card)

    def _check_count(self, images: list) -> None:
        check_count(len(images), self.settings.max_batch_images)

    def openapi(self) -> dict:
        """/docs.json: BentoML's document describes neither the mounted routes nor their
        errors (serving/openapi.py)."""
        return openapi.document(
            Classifier.openapi_spec.asdict(), self.settings.max_batch_images, self.api_keys_on
        )


# BentoML stacks these, in this order, inside its own (metrics, tracing, access log, timeout,
# concurrency; _bentoml_impl/server/app.py ServiceAppFactory.middlewares). ServerErrors first:
# an exception below it would otherwise hang the request until the traffic timeout; then the
# key check, so that an unauthenticated body is never read.
Classifier.add_asgi_middleware(ServerErrors)
Classifier.add_asgi_middleware(auth.ApiKeyMiddleware, keys=auth.api_keys())
Classifier.add_asgi_middleware(
    NativeErrors,
    max_upload_bytes=config.settings().max_upload_bytes,
    routes={api.route: tuple(api.input_spec.multipart_fields) for api in Classifier.apis.values()},
)

"""The BentoML service: `bentoml serve` (from the repo root) or `bentoml build` serve this.

One service, one process: `Classifier` owns the HTTP API (the routes of serving/routes.py,
mounted as an ASGI app: the curl forms, the demo page; and the BentoML-native APIs under /api/,
for bentoml.SyncHTTPClient and bentoml.depends) and the model itself, the engine chosen by
inference/backend.py (ONNX Runtime or OpenVINO, fp32 or INT8). Concurrent requests are batched
in this process by inference/batcher.py: no hop to a second model process and no batching wait
(BentoML's adaptive batching needs both; the README's serving section has the measurements).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import bentoml
import numpy as np

from inference.answers import Ask
from inference.backend import ModelFileError, open_backend, read_card
from inference.batcher import Batcher, engine_thread
from serving import auth, bentoml_patches, config, openapi
from serving.native import NativeErrors, api_errors
from serving.routes import (
    Slots,
    check_count,
    class_ask,
    classify_many,
    classify_one,
    explain_many,
    explain_one,
)
from serving.routes import app as http_app
from serving.schemas import (
    BatchClassification,
    BatchExplanation,
    Classification,
    Explanation,
    MinConfidence,
    TopK,
    Wnid,
)

log = logging.getLogger("bentoml.tin")  # BentoML prints its own loggers


def checked_settings() -> config.Settings:
    """The settings, with the model file's card read: a bad TIN_MODEL (a missing tag, a file
    that is not one of our exports) or a bad setting ends `bentoml serve` here with one line,
    before BentoML starts a worker whose traceback would bury the message."""
    try:
        settings = config.settings()
        config.batch_max_size(), config.batch_max_latency_ms(), config.max_overlays()
        config.tracing_options()
        read_card(settings.model_path)
    except (config.ConfigError, ModelFileError) as e:  # StoreError is a ConfigError
        sys.stderr.write(f"error: {e}\n")
        raise SystemExit(2) from None
    return settings


def model_name(settings: config.Settings, card) -> str:
    """What answers and logs call the model: its tag in the model store, else its file's name,
    but for the default file name (model.onnx, which says nothing) the preset and the first
    digits of the checkpoint it came from: final-fcb76c51. (A stored model's version ends with
    the file's hash instead, since two exports of one checkpoint are two versions.)"""
    if settings.model_tag or settings.model_path.stem != "model":
        return settings.model_name
    return f"{card.preset or 'model'}-{(card.checkpoint_sha256 or 'unknown')[:8]}"


SETTINGS = checked_settings()
MODEL_TAG = SETTINGS.model_tag  # TIN_MODEL as name:version, when it is a stored model
# BentoML's request timeout with its timer cancelled, uvicorn's header timeout and drain, ...
bentoml_patches.install(SETTINGS.header_timeout_s, SETTINGS.drain_s, SETTINGS.max_connections)

# Requests per engine call; bench/http.py reads it as "merged".
ENGINE_BATCH = bentoml.metrics.Histogram(
    name="tin_engine_batch_requests",
    documentation="requests merged into one engine call",
    labelnames=["method"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)


@bentoml.asgi_app(http_app)
@bentoml.service(
    name="Classifier",
    workers=1,
    traffic={"timeout": 120},
    **config.tracing_options(),  # none by default: serving/config.py says why
)
class Classifier:
    """Top-k Tiny ImageNet predictions and their activation maps over HTTP."""

    if MODEL_TAG:
        # Declared, so that `bentoml build` packages the stored model as a model of the Bento
        # (_bentoml_sdk/service/factory.py collects Model class attributes into `models`); a
        # file given as TIN_MODEL is not a model to BentoML and travels as a source file, if
        # bentofile.yaml includes it.
        stored_model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self):
        self.settings = s = config.settings()
        max_batch = config.batch_max_size()
        self.backend = open_backend(
            s.model_path, s.backend, s.precision, max_batch=max_batch, threads=s.threads
        )
        self.backend.warm_up()  # runs before the server listens, so /readyz implies warm
        self.card = self.backend.card  # labels, accuracy, map size: every route needs it
        self.name = model_name(s, self.card)
        self.api_keys_on = bool(auth.api_keys())
        engine, wait = engine_thread(), config.batch_max_latency_ms() / 1000

        def batcher(method: str, run) -> Batcher:
            observe = lambda requests, _: ENGINE_BATCH.labels(method=method).observe(requests)  # noqa: E731
            return Batcher(run, max_batch, wait, engine, observe)

        self.predictions = batcher("predict", lambda x: (self.backend.predict(x),))
        self.explainer = batcher("explain", self.backend.explain)
        self.overlays = Slots(config.max_overlays(), "PNG overlays")  # /explain?format=png
        http_app.state.service = self  # what the mounted routes answer with (serving/routes.py)
        log.info(
            "Classifier: model %s (%d classes), uploads up to %d bytes, %d images per batch "
            "request, %d per engine call%s",
            self.name,
            len(self.card.wnids),
            s.max_upload_bytes,
            s.max_batch_images,
            max_batch,
            ", API keys required" if self.api_keys_on else "",
        )

    async def probabilities(self, images: np.ndarray) -> np.ndarray:
        (probs,) = await self.predictions(images)
        return probs

    async def explanations(self, images: np.ndarray):
        """(probabilities (N, C), logits (N, C), cam (N, C, h, w)) of uint8 images."""
        return await self.explainer(images)

    async def backend_info(self) -> dict:
        return self.backend.info

    # --- BentoML-native APIs (serving/native.py): for bentoml.SyncHTTPClient and friends -------

    @bentoml.api(route="/api/classify")
    @api_errors
    async def classify(
        self,
        image: Path,
        top_k: TopK = config.DEFAULT_TOP_K,
        min_confidence: MinConfidence = None,  # not asked; a null sent is refused
    ) -> Classification:
        """Classify one image (multipart field `image`); the top_k most probable classes."""
        # BentoML wrote the upload to a request temp file; NativeErrors has checked its size.
        body = await classify_one(self, image.read_bytes(), top_k, self._least(min_confidence))
        return Classification(**body)

    @bentoml.api(route="/api/classify_batch")
    @api_errors
    async def classify_batch(
        self,
        images: list[Path],
        top_k: TopK = config.DEFAULT_TOP_K,
        min_confidence: MinConfidence = None,  # not asked; a null sent is refused
    ) -> BatchClassification:
        """Classify several images, in order; an unreadable one gets an error in its place."""
        self._check_count(images)
        data = [p.read_bytes() for p in images]
        body = await classify_many(self, data, top_k, self._least(min_confidence))
        return BatchClassification(**body)

    @bentoml.api(route="/api/explain")
    @api_errors
    async def explain(
        self,
        image: Path,
        top_k: TopK = config.DEFAULT_EXPLAIN_TOP_K,
        wnid: Wnid | None = None,
        min_confidence: MinConfidence = None,  # not asked; a null sent is refused
    ) -> Explanation:
        """The activation maps of the top_k classes, or of the class `wnid` (GET /labels)."""
        ask, least = self._ask(top_k, wnid), self._least(min_confidence)
        body, _ = await explain_one(self, image.read_bytes(), ask, least=least)
        return Explanation(**body)

    @bentoml.api(route="/api/explain_batch")
    @api_errors
    async def explain_batch(
        self,
        images: list[Path],
        top_k: TopK = config.DEFAULT_EXPLAIN_TOP_K,
        wnid: Wnid | None = None,
        min_confidence: MinConfidence = None,  # not asked; a null sent is refused
    ) -> BatchExplanation:
        """/api/explain for several images, in order; an unreadable one gets an error."""
        self._check_count(images)
        data = [p.read_bytes() for p in images]
        ask, least = self._ask(top_k, wnid), self._least(min_confidence)
        return BatchExplanation(**await explain_many(self, data, ask, least))

    def _ask(self, top_k: int, wnid: str | None) -> Ask:
        return Ask(top_k=top_k) if wnid is None else class_ask(wnid, self.card)

    def _least(self, min_confidence: float | None) -> float | None:
        """The request's min_confidence, else the service's (TIN_MIN_CONFIDENCE)."""
        return self.settings.min_confidence if min_confidence is None else min_confidence

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
# Every path these answer, and BentoML's own: any other is counted as one label in /metrics.
bentoml_patches.bound_metric_paths(
    {r.path for r in http_app.routes}
    | {api.route for api in Classifier.apis.values()}
    | {"/", "/livez", "/readyz", "/healthz", "/docs.json", "/schema.json"}
)
Classifier.add_asgi_middleware(bentoml_patches.ServerErrors)
Classifier.add_asgi_middleware(bentoml_patches.FrontDoor)  # before the key check: /ui is open
Classifier.add_asgi_middleware(auth.ApiKeyMiddleware, keys=auth.api_keys())
Classifier.add_asgi_middleware(
    NativeErrors,
    max_upload_bytes=SETTINGS.max_upload_bytes,
    body_timeout_s=SETTINGS.body_timeout_s,
    routes={
        api.route: (tuple(api.input_spec.multipart_fields), tuple(api.input_spec.model_fields))
        for api in Classifier.apis.values()
    },
)

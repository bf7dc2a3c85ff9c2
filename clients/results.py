"""What the service answers, as Python values: results, predictions, activation maps, labels,
the model card; and the parsing of its JSON into them (httpx responses in, dataclasses out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from clients.errors import ClientError


@dataclass(frozen=True)
class Prediction:
    rank: int
    wnid: str
    label: str
    probability: float


@dataclass(frozen=True)
class Result:
    """One input's answer: `predictions` (most probable first), or `error` when it failed.

    `index` is its position in the input, `input` the path it came from (or `<bytes #3>`)."""

    index: int
    input: str
    predictions: tuple[Prediction, ...] = ()
    error: ClientError | None = None
    model: str | None = None
    # The service's judgement: top-1 probability >= the min_confidence asked for (or its
    # TIN_MIN_CONFIDENCE); None where none applied.
    confident: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def top1(self) -> Prediction | None:
        return self.predictions[0] if self.predictions else None

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"input": self.input}
        if self.error is not None:
            record["error"] = self.error.to_dict()
        else:
            record["model"] = self.model
            record["confident"] = self.confident
            record["predictions"] = [vars(p) for p in self.predictions]
        return record


@dataclass(frozen=True)
class ClassMap(Prediction):
    """A class and where the model saw it: `cam`, h rows of w values in logit units, with
    mean(cam) + bias = logit (Zhou et al., "Learning Deep Features for Discriminative
    Localization")."""

    logit: float = 0.0
    bias: float = 0.0
    cam: tuple[tuple[float, ...], ...] = ()

    @property
    def map(self):
        """The map as a float32 numpy array (h, w); numpy is imported only here."""
        import numpy as np

        return np.asarray(self.cam, dtype=np.float32)


@dataclass(frozen=True)
class Explanation(Result):
    """One input's activation maps: `predictions` are ClassMaps. `image_size` is the upload's
    (width, height) as displayed; `source` the input it came from, for `overlay`."""

    predictions: tuple[ClassMap, ...] = ()
    map_size: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None
    source: Any = field(default=None, repr=False, compare=False)

    def overlay(self, which: int | str = 1, image: Any = None, min_side: int = 0):
        """A PIL image: the map of the class of rank `which` (or wnid `which`) drawn over the
        image (`image`, else the input) at its own size, as the service's format=png draws it,
        or enlarged by a whole factor to at least `min_side` pixels on its long side. Needs
        numpy and Pillow; EXIF orientation is applied, as the service applies it."""
        from inference.overlay import overlay
        from inference.preprocess import open_rgb

        found = [
            c for c in self.predictions if which in (c.rank, c.wnid)
        ]  # rank 1 is the most probable
        if not found:
            raise KeyError(f"no class {which!r} in this explanation")
        source = self.source if image is None else image
        if source is None:
            raise ValueError("no image to draw on: pass image=")
        from clients.inputs import image_bytes

        rgb = open_rgb(image_bytes(source), max_pixels=10**9)
        if max(rgb.size) < min_side:
            k = -(-min_side // max(rgb.size))  # a whole factor: pixels stay square blocks
            from PIL import Image

            rgb = rgb.resize((rgb.width * k, rgb.height * k), Image.Resampling.BICUBIC)
        return overlay(rgb, found[0].map)

    def to_dict(self) -> dict[str, Any]:
        record = super().to_dict()
        if self.error is None:
            record["map_size"] = list(self.map_size or ())
            record["image_size"] = list(self.image_size or ())
        return record


@dataclass(frozen=True)
class Label:
    index: int
    wnid: str
    label: str


@dataclass(frozen=True)
class ModelInfo:
    """GET /model; `raw` keeps every field, including those this client does not know."""

    name: str
    preset: str | None = None
    precision: str | None = None
    val_top1: float | None = None
    val_top5: float | None = None
    input: dict | None = None
    backend: dict | None = None
    versions: dict | None = None
    checkpoint_sha256: str | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_json(cls, body: dict) -> ModelInfo:
        known = {k: body.get(k) for k in cls.__dataclass_fields__ if k != "raw"}
        return cls(**known, raw=body)


# --- parsing responses ---------------------------------------------------------------------


def error_from_response(response: httpx.Response) -> ClientError:
    """The server's {"error": {"code", "message"}}, or what else the answer holds."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or f"http_{status}")
        message = str(error.get("message") or response.reason_phrase)
    else:  # BentoML's own routes answer {"error": "..."}; a proxy may answer HTML
        code = f"http_{status}"
        message = str(error) if error else (response.text.strip()[:500] or response.reason_phrase)
    return ClientError(message, code, status)


def transport_error(exc: Exception, url: str) -> ClientError:
    code = "timeout" if isinstance(exc, httpx.TimeoutException) else "connection_error"
    return ClientError(f"{url}: {type(exc).__name__}: {exc}", code)


def json_body(response: httpx.Response) -> dict:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        message = f"{response.request.url.path} answered {response.text[:200]!r}, not JSON"
        raise ClientError(message, "bad_response", response.status_code)
    return body


def predictions(raw: Any) -> tuple[Prediction, ...]:
    try:
        return tuple(
            Prediction(int(p["rank"]), str(p["wnid"]), str(p["label"]), float(p["probability"]))
            for p in raw
        )
    except (KeyError, TypeError, ValueError):
        raise ClientError(f"malformed predictions {raw!r:.200}", "bad_response") from None


def class_maps(raw: Any) -> tuple[ClassMap, ...]:
    try:
        return tuple(
            ClassMap(
                int(p["rank"]),
                str(p["wnid"]),
                str(p["label"]),
                float(p["probability"]),
                float(p["logit"]),
                float(p["bias"]),
                tuple(tuple(map(float, r)) for r in p["cam"]),
            )
            for p in raw
        )
    except (KeyError, TypeError, ValueError):
        raise ClientError(f"malformed activation maps {raw!r:.200}", "bad_response") from None


def _size(raw: Any) -> tuple[int, int] | None:
    return tuple(int(v) for v in raw) if isinstance(raw, list) and len(raw) == 2 else None


def _flag(raw: Any) -> bool | None:
    return raw if isinstance(raw, bool) else None


def explanation(name: str, body: dict, source: Any = None, index: int = 0) -> Explanation:
    """An /explain answer (or one /explain_batch result with the batch's map size)."""
    return Explanation(
        index,
        name,
        class_maps(body.get("predictions")),
        model=body.get("model"),
        confident=_flag(body.get("confident")),
        map_size=_size(body.get("map_size")),
        image_size=_size(body.get("image_size")),
        source=source,
    )


def batch_results(items: list, body: dict, kind: type[Result] = Result) -> dict[int, Result]:
    """A batch answer's results by input index: Results, or Explanations for /explain_batch."""
    answers = body.get("results")
    if not isinstance(answers, list) or len(answers) != len(items):
        got = len(answers) if isinstance(answers, list) else "no"
        raise ClientError(f"{got} results for {len(items)} images", "bad_response")
    model = body.get("model")
    out = {}
    for position, answer in enumerate(answers):
        if not isinstance(answer, dict):
            raise ClientError(f"malformed result {answer!r:.200}", "bad_response")
        index = answer.get("index", position)  # the server says which image; else its place
        if not isinstance(index, int) or not 0 <= index < len(items):
            raise ClientError(f"result for image {index!r} of {len(items)}", "bad_response")
        item = items[index]
        if "error" in answer:
            e = (
                answer["error"]
                if isinstance(answer["error"], dict)
                else {"message": answer["error"]}
            )
            error = ClientError(str(e.get("message", e)), str(e.get("code", "bad_image")))
            out[item.index] = kind(item.index, item.name, error=error, model=model)
        elif kind is Explanation:
            answer = {"model": model, "map_size": body.get("map_size"), **answer}
            out[item.index] = explanation(item.name, answer, item.source, item.index)
        else:
            preds = predictions(answer.get("predictions"))
            sure = _flag(answer.get("confident"))
            out[item.index] = Result(item.index, item.name, preds, model=model, confident=sure)
    if len(out) != len(items):
        raise ClientError("the server answered some images twice and others not", "bad_response")
    return out

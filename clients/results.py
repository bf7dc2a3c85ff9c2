"""What the service answers, as Python values: results, predictions, labels, the model card,
and ClientError; and the parsing of its JSON into them (httpx responses in, dataclasses out)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass(eq=False)
class ClientError(Exception):
    """A request or an image the service (or the client) refused; `message` is the server's.

    `code` is the server's error code (not_an_image, upload_too_large...) or the client's
    (connection_error, timeout, unreadable_file, bad_input...); `status` is the HTTP status of a
    refused request, None for an image refused inside a batch or when no answer came."""

    message: str
    code: str = "client_error"
    status: int | None = None

    def __post_init__(self):
        super().__init__(self.message)  # args, so that pickling and tracebacks work

    def __str__(self) -> str:
        where = f"HTTP {self.status} " if self.status is not None else ""
        return f"{self.message} [{where}{self.code}]"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "status": self.status}


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
            record["predictions"] = [vars(p) for p in self.predictions]
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


def batch_results(items: list, body: dict) -> dict[int, Result]:
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
            out[item.index] = Result(item.index, item.name, error=error, model=model)
        else:
            preds = predictions(answer.get("predictions"))
            out[item.index] = Result(item.index, item.name, preds, model=model)
    if len(out) != len(items):
        raise ClientError("the server answered some images twice and others not", "bad_response")
    return out

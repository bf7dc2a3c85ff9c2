"""The OpenAPI description of the routes in serving/routes.py, merged into BentoML's /docs.json.

BentoML 1.4 builds /docs.json from its @bentoml.api methods, its own /healthz, /livez, /readyz
and /metrics, and mounted FastAPI apps only: the Starlette routes mounted here would be missing,
and with them everything a client generator or a fuzzer (schemathesis, tests/test_fuzz.py) needs.
So the routes serve /docs.json themselves (BentoML's part plus these paths); BentoML's Swagger UI
at / reads the same document. The answers' schemas are the pydantic models of serving/schemas.py,
the same ones the native APIs return (and BentoML's /schema.json describes); only the requests'
forms (multipart fields, raw bodies, query parameters) are written here.
"""

from __future__ import annotations

from pydantic import TypeAdapter

from serving import schemas
from serving.config import DEFAULT_EXPLAIN_TOP_K, DEFAULT_TOP_K

TITLE = "Tiny ImageNet classifier"
DESCRIPTION = (
    "Top-k Tiny ImageNet predictions and where the model looked. POST /classify takes one image "
    "(multipart field `image`, or a raw image body), POST /classify_batch several (repeated "
    "field `images`); POST /explain and /explain_batch answer the class-activation maps of the "
    "top_k classes or of class=WNID; the /api/ routes are the same for BentoML's own clients. "
    "JPEG, PNG, WebP, BMP and GIF are read; every refusal is a 4xx with "
    '{"error": {"code": ..., "message": ...}}. The demo page is GET /ui.'
)

REF = "#/components/schemas/"
BINARY = {"type": "string", "format": "binary", "minLength": 1}  # 0 bytes: empty_image
TOP_K = {**TypeAdapter(schemas.TopK).json_schema(), "default": DEFAULT_TOP_K}
TOP_K_QUERY = {
    "name": "top_k",
    "in": "query",
    "required": False,
    "description": "how many classes to answer; a form field `top_k` takes precedence",
    "schema": TOP_K,
}
MIN_CONFIDENCE = TypeAdapter(schemas.MinConfidence).json_schema()
MIN_CONFIDENCE_QUERY = {
    "name": "min_confidence",
    "in": "query",
    "required": False,
    "description": "judge the answer: confident is false below this top-1 probability (default: "
    "TIN_MIN_CONFIDENCE, else not judged); a form field `min_confidence` takes precedence",
    "schema": MIN_CONFIDENCE,
}

EXPLAIN_QUERY = [
    {**TOP_K_QUERY, "schema": {**TOP_K, "default": DEFAULT_EXPLAIN_TOP_K}},
    {
        "name": "class",
        "in": "query",
        "required": False,
        "description": "explain this class (a wnid or a label of GET /labels) instead of the top_k",
        "schema": {"type": "string", "minLength": 1},
    },
    MIN_CONFIDENCE_QUERY,
]
FORMAT_QUERY = {
    "name": "format",
    "in": "query",
    "required": False,
    "description": "json (the maps as numbers) or png (drawn over the image, one per class)",
    "schema": {"type": "string", "enum": ["json", "png"], "default": "json"},
}


def _json(description: str, schema: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": REF + schema}}},
    }


def _errors(*statuses: int) -> dict:
    reasons = {
        400: "a bad request or image (the code says which)",
        413: "the body is over TIN_MAX_UPLOAD_MB",
        415: "not a multipart form (or, for /classify, a raw image body)",
        503: "the model is overloaded or unavailable; retry later",
    }
    return {str(s): _json(reasons[s], "Error") for s in statuses}


def _post(
    summary: str,
    body: dict,
    ok,
    description: str = "",
    parameters=(TOP_K_QUERY, MIN_CONFIDENCE_QUERY),
) -> dict:
    ok = _json("the answer", ok) if isinstance(ok, str) else ok
    return {
        "post": {
            "summary": summary,
            "description": description,
            "tags": ["Service APIs"],
            "parameters": list(parameters),
            "requestBody": {"required": True, "content": body},
            "responses": {"200": ok, **_errors(400, 413, 415, 503)},
        }
    }


def _get(summary: str, ok: str) -> dict:
    return {
        "get": {
            "summary": summary,
            "tags": ["Service APIs"],
            "responses": {"200": _json(summary, ok)},
        }
    }


def paths(max_images: int) -> dict:
    """The routes of serving/routes.py; `max_images` is TIN_MAX_BATCH_IMAGES."""
    # An empty or broken file in a batch gets an error in its place, not a 400: any bytes do.
    item = {"type": "string", "format": "binary"}
    images = {"type": "array", "items": item, "minItems": 1, "maxItems": max_images}
    one_image = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image"],
                "properties": {
                    "image": BINARY,
                    "top_k": TOP_K,
                    "min_confidence": MIN_CONFIDENCE,
                },
            }
        },
        "image/jpeg": {"schema": BINARY},
        "image/png": {"schema": BINARY},
        "application/octet-stream": {"schema": BINARY},
    }
    maps = {
        "description": "the maps: JSON, or with format=png one PNG per class (image/png for "
        "one class, multipart/mixed of image/png parts for several)",
        "content": {
            "application/json": {"schema": {"$ref": REF + "Explanation"}},
            "image/png": {"schema": BINARY},
            "multipart/mixed": {"schema": BINARY},
        },
    }
    return {
        "/explain": _post(
            "Where the model looked: class-activation maps of one image",
            one_image,
            maps,
            "The top_k classes' maps (default 3) or class=WNID's, each h×w in logit units with "
            "the bias that makes mean(map) + bias its logit; format=png draws them over the "
            "uploaded image at its own size.",
            [*EXPLAIN_QUERY, FORMAT_QUERY],
        ),
        "/explain_batch": _post(
            "Class-activation maps of several images, in order (JSON)",
            {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["images"],
                        "properties": {
                            "images": images,
                            "top_k": TOP_K,
                            "min_confidence": MIN_CONFIDENCE,
                        },
                    }
                }
            },
            "BatchExplanation",
            f"At most {max_images} images; an image that cannot be read gets an error in its "
            "place.",
            EXPLAIN_QUERY,
        ),
        "/classify": _post(
            "Classify one image",
            one_image,
            "Classification",
            "A multipart form, or the image itself as the body (any image/* type; top_k then in "
            "the query string). The format is read from the bytes, not the declared type.",
        ),
        "/classify_batch": _post(
            "Classify several images, in order",
            {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["images"],
                        "properties": {
                            "images": images,
                            "top_k": TOP_K,
                            "min_confidence": MIN_CONFIDENCE,
                        },
                    }
                }
            },
            "BatchClassification",
            f"At most {max_images} images (TIN_MAX_BATCH_IMAGES). An image that cannot be read "
            "gets an error in its place; the others are still classified.",
        ),
        "/labels": _get("The classes, in the model's output order", "Labels"),
        "/model": _get("The model card, backend and limits", "ModelInfo"),
        "/ui": {
            "get": {
                "summary": "The demo page (open without an API key; it asks for one)",
                "tags": ["Service APIs"],
                "responses": {"200": {"description": "the page", "content": {"text/html": {}}}},
            }
        },
    }


SCHEMAS = schemas.components(REF)  # the answers' models: serving/schemas.py


NATIVE_PREFIX = "/api/"  # serving/native.py's; not imported, which would bring in starlette
PUBLIC = ("/livez", "/readyz", "/healthz", "/metrics", "/ui")  # serving/auth.py OPEN_PATHS


def _ours(response: dict) -> dict:
    """A 2xx response of an @bentoml.api route, pointing at our model of the answer: BentoML
    inlines it as NAMEIODescriptor and drops `null` from its optional fields (1.4.39), so
    "confident": null would not fit its own schema."""
    content = response.get("content", {}).get("application/json", {})
    name = content.get("schema", {}).get("title", "").removesuffix("IODescriptor")
    if name not in SCHEMAS:
        return response
    return {**response, "content": {"application/json": {"schema": {"$ref": REF + name}}}}


def native_errors(bentoml_paths: dict) -> dict:
    """BentoML documents its own error shapes (InvalidArgument...) for the @bentoml.api routes;
    serving/native.py answers ours instead, and the answers are serving/schemas.py's."""
    out = {}
    for path, item in bentoml_paths.items():
        if path.startswith(NATIVE_PREFIX) and "post" in item:
            responses = item["post"]["responses"].items()
            ok = {str(k): _ours(v) for k, v in responses if str(k).startswith("2")}
            item = {
                **item,
                "post": {**item["post"], "responses": {**ok, **_errors(400, 413, 415, 503)}},
            }
        out[path] = item
    return out


def with_api_keys(spec: dict) -> dict:
    """A bearer scheme on every path but the probes and the metrics, and their 401."""
    unauthorized = _json("a missing or wrong API key (Authorization: Bearer KEY)", "Error")
    paths = {}
    for path, item in spec["paths"].items():
        if path not in PUBLIC:
            item = {
                method: {
                    **op,
                    "security": [{"apiKey": []}],
                    "responses": {**op.get("responses", {}), "401": unauthorized},
                }
                for method, op in item.items()
            }
        paths[path] = item
    components = spec["components"]
    schemes = {"apiKey": {"type": "http", "scheme": "bearer"}}
    return {**spec, "paths": paths, "components": {**components, "securitySchemes": schemes}}


def document(bentoml_spec: dict, max_images: int, api_keys: bool = False) -> dict:
    """BentoML's document (its /healthz, /metrics, the @bentoml.api routes) with this API's
    paths and schemas."""
    own = native_errors(bentoml_spec.get("paths", {}))
    spec = {**bentoml_spec, "paths": {**own, **paths(max_images)}}
    spec["info"] = {**spec.get("info", {}), "title": TITLE, "description": DESCRIPTION}
    components = spec.get("components", {})
    spec["components"] = {**components, "schemas": {**components.get("schemas", {}), **SCHEMAS}}
    return with_api_keys(spec) if api_keys else spec

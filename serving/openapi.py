"""The OpenAPI description of the routes in serving/routes.py, merged into BentoML's /docs.json.

BentoML 1.4 builds /docs.json from its @bentoml.api methods, its own /healthz, /livez, /readyz
and /metrics, and mounted FastAPI apps only: the Starlette routes mounted here would be missing,
and with them everything a client generator or a fuzzer (schemathesis, tests/test_fuzz.py) needs.
So the routes serve /docs.json themselves (BentoML's part plus these paths); BentoML's Swagger UI
at / reads the same document.
"""

from __future__ import annotations

from serving.config import DEFAULT_TOP_K, MAX_TOP_K

TITLE = "Tiny ImageNet classifier"
DESCRIPTION = (
    "Top-k Tiny ImageNet predictions. POST /classify takes one image (multipart field `image`, "
    "or a raw image body), POST /classify_batch several (repeated field `images`). JPEG, PNG, "
    "WebP, BMP and GIF are read; every refusal is a 4xx with "
    '{"error": {"code": ..., "message": ...}}.'
)

REF = "#/components/schemas/"
BINARY = {"type": "string", "format": "binary", "minLength": 1}  # 0 bytes: empty_image
TOP_K = {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": DEFAULT_TOP_K}
TOP_K_QUERY = {
    "name": "top_k",
    "in": "query",
    "required": False,
    "description": "how many classes to answer; a form field `top_k` takes precedence",
    "schema": TOP_K,
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


def _post(summary: str, body: dict, ok: str, description: str = "") -> dict:
    return {
        "post": {
            "summary": summary,
            "description": description,
            "tags": ["Service APIs"],
            "parameters": [TOP_K_QUERY],
            "requestBody": {"required": True, "content": body},
            "responses": {"200": _json("predictions", ok), **_errors(400, 413, 415, 503)},
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
    return {
        "/classify": _post(
            "Classify one image",
            {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["image"],
                        "properties": {"image": BINARY, "top_k": TOP_K},
                    }
                },
                "image/jpeg": {"schema": BINARY},
                "image/png": {"schema": BINARY},
                "application/octet-stream": {"schema": BINARY},
            },
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
                        "properties": {"images": images, "top_k": TOP_K},
                    }
                }
            },
            "BatchClassification",
            f"At most {max_images} images (TIN_MAX_BATCH_IMAGES). An image that cannot be read "
            "gets an error in its place; the others are still classified.",
        ),
        "/labels": _get("The classes, in the model's output order", "Labels"),
        "/model": _get("The model card, backend and limits", "ModelInfo"),
    }


_STRING = {"type": "string"}
_PREDICTION = {
    "type": "object",
    "required": ["rank", "wnid", "label", "probability"],
    "properties": {
        "rank": {"type": "integer", "minimum": 1},
        "wnid": _STRING,
        "label": _STRING,
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
    },
}
_ERROR_DETAIL = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "code": {"type": "string", "minLength": 1},
        "message": {"type": "string", "minLength": 1},
    },
}

SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": _ERROR_DETAIL}},
    "Prediction": _PREDICTION,
    "Classification": {
        "type": "object",
        "required": ["model", "predictions"],
        "properties": {"model": _STRING, "predictions": {"type": "array", "items": _PREDICTION}},
    },
    "BatchClassification": {
        "type": "object",
        "required": ["model", "results"],
        "properties": {
            "model": _STRING,
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index"],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "predictions": {"type": "array", "items": _PREDICTION},
                        "error": _ERROR_DETAIL,
                    },
                },
            },
        },
    },
    "Labels": {
        "type": "object",
        "required": ["labels"],
        "properties": {
            "labels": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["index", "wnid", "label"],
                    "properties": {"index": {"type": "integer"}, "wnid": _STRING, "label": _STRING},
                },
            }
        },
    },
    "ModelInfo": {
        "type": "object",
        "required": ["name", "classes", "input", "backend", "limits"],
        "properties": {
            "name": _STRING,
            "classes": {"type": "integer", "minimum": 1},
            "input": {"type": "object"},
            "backend": {"type": "object"},
            "limits": {"type": "object"},
        },
    },
}


def document(bentoml_spec: dict, max_images: int) -> dict:
    """BentoML's document (its /healthz, /metrics...) with this API's paths and schemas."""
    spec = {**bentoml_spec, "paths": {**bentoml_spec.get("paths", {}), **paths(max_images)}}
    spec["info"] = {**spec.get("info", {}), "title": TITLE, "description": DESCRIPTION}
    components = spec.get("components", {})
    spec["components"] = {**components, "schemas": {**components.get("schemas", {}), **SCHEMAS}}
    return spec

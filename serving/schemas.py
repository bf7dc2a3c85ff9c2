"""What the API answers, as pydantic models: the one description of the answers.

The BentoML-native APIs (serving/service.py) return these, so BentoML's /schema.json and its
clients read them; serving/openapi.py turns the same models into the components of /docs.json,
which describes the mounted routes (serving/routes.py) too, and schemathesis (tests/test_fuzz.py)
checks every answer of both surfaces against it. The dicts inference/answers.py builds are
these shapes.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from serving.config import MAX_TOP_K

# strict: BentoML json-decodes each form field, and a lax int would take `true` as 1.
TopK = Annotated[
    int,
    Field(ge=1, le=MAX_TOP_K, strict=True, description="how many classes to answer"),
]
# One name per wnid: Tiny ImageNet's are "n" and 8 digits; other models may name them otherwise.
Wnid = Annotated[str, Field(min_length=1, max_length=64, description="a class, as in GET /labels")]
MinConfidence = Annotated[
    float,
    Field(
        ge=0,
        le=1,
        strict=True,  # as TopK: a lax float would take `true` as 1.0
        description="below this top-1 probability the answer says confident: false (the top k "
        "are still listed); the model card's calibration.selective gives it for 80% and 90% top-1",
    ),
]
# Whether the top-1 probability reaches min_confidence; null when no min_confidence applied.
Confident = Annotated[bool | None, Field(description="top-1 probability >= min_confidence")]
Size = Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=2, max_length=2)]
Text = Annotated[str, Field(min_length=1)]


class Prediction(BaseModel):
    rank: Annotated[int, Field(ge=1)]
    wnid: str
    label: str
    probability: Annotated[float, Field(ge=0, le=1)]


class Classification(BaseModel):
    model: str
    min_confidence: MinConfidence | None = None
    confident: Confident = None
    predictions: list[Prediction]


class ErrorDetail(BaseModel):
    code: Text
    message: Text


class Error(BaseModel):
    """Every refusal, on every route: a 4xx (or 503) with this body."""

    error: ErrorDetail


class ImageResult(BaseModel):
    # [] rather than None for a failed image: BentoML's client cannot decode a null where its
    # schema says array (_bentoml_impl/serde.py GenericSerde._decode iterates it).
    index: Annotated[int, Field(ge=0)]
    confident: Confident = None
    predictions: list[Prediction] = []
    error: ErrorDetail | None = None


class BatchClassification(BaseModel):
    model: str
    min_confidence: MinConfidence | None = None
    results: list[ImageResult]


class ClassMap(Prediction):
    """One class's activation map (h rows of w values, logit units): mean(cam) + bias = logit."""

    logit: float
    bias: float
    cam: list[list[float]]


class Explanation(BaseModel):
    model: str
    min_confidence: MinConfidence | None = None
    confident: Confident = None
    map_size: Size
    image_size: Size  # the upload's width and height, as displayed (EXIF applied)
    predictions: list[ClassMap]


class ExplainResult(BaseModel):
    index: Annotated[int, Field(ge=0)]
    confident: Confident = None
    image_size: list[int] = []  # [] for an image that could not be read, as predictions
    predictions: list[ClassMap] = []
    error: ErrorDetail | None = None


class BatchExplanation(BaseModel):
    model: str
    min_confidence: MinConfidence | None = None
    map_size: Size
    results: list[ExplainResult]


class Label(BaseModel):
    index: int
    wnid: str
    label: str


class Labels(BaseModel):
    labels: list[Label]


class ModelInfo(BaseModel):
    """GET /model: the model card's name and input, the engine, and the service's limits."""

    name: str
    classes: Annotated[int, Field(ge=1)]
    input: dict[str, Any]
    backend: dict[str, Any]
    limits: dict[str, Any]


ANSWERS = (Error, Classification, BatchClassification, Explanation, BatchExplanation)
ANSWERS += (Labels, ModelInfo)


def components(ref_prefix: str = "#/components/schemas/") -> dict[str, dict]:
    """The JSON schemas of ANSWERS and of every model they hold, by class name, with references
    in OpenAPI's form."""
    _, defs = models_json_schema(
        [(m, "serialization") for m in ANSWERS], ref_template=ref_prefix + "{model}"
    )
    return defs["$defs"]

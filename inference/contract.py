"""The exported model's contract, shared by export (which writes it) and serving (which reads it).

Pure Python on purpose: the `serve` and `client` extras have no torch and no onnx, and serving
imports this module to read a model file, so the two sides cannot drift.

Graph:
- input  `image`: uint8, shape (N, 64, 64, 3), RGB, NHWC, N dynamic. Normalisation by the
  training set's mean and std happens inside the graph, so a caller only decodes and resizes.
- outputs `logits` (N, C) float32, `probabilities` (N, C) float32 (softmax of the logits) and
  `cam` (N, C, h, w) float32, the class-activation maps (Zhou et al., CVPR 2016, "Learning Deep
  Features for Discriminative Localization"): mean(cam[n, k]) + bias[k] = logits[n, k], in logit
  units (export/graph.py computes the logits from the maps, so this holds in every precision).

Forms: NAME.onnx computes in fp32; NAME.int8.onnx (ONNX Runtime) and NAME.int8.xml + .bin
(an OpenVINO IR, its card under rt_info/IR_CARD_KEY) are its INT8 forms, each with its own card
and its `parity` figures against the fp32 file.

Metadata (ONNX `metadata_props`, every value a string; structured values are JSON) under the keys
of `METADATA_KEYS`. `ModelCard.from_metadata` checks and parses them; a file without them is not
one of ours and fails with a message that says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "tiny-imagenet-onnx/1"
INPUT_NAME = "image"
OUTPUT_LOGITS = "logits"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_CAM = "cam"
OUTPUTS = (OUTPUT_LOGITS, OUTPUT_PROBABILITIES, OUTPUT_CAM)
IMAGE_SIZE = 64
IR_CARD_KEY = "tiny_imagenet"  # where an OpenVINO IR keeps the card (rt_info)
# The accuracy bar a reduced-precision form must hold on the val images, against the fp32 model
# it came from: the export refuses a form that misses it, and the service's `auto` choice reads
# it from the form's own card.
INT8_MAX_DROP_POINTS = 0.5
INT8_MIN_AGREEMENT = 0.95
# How any image becomes the 64x64 RGB input, the same in evaluation and serving: the training
# and val images are already 64x64 (no resize); other sizes are resized with PIL's bicubic filter,
# which antialiases when it shrinks.
RESIZE_FILTER = "bicubic"


class ContractError(ValueError):
    """A model file whose metadata is missing or does not follow this contract."""


@dataclass(frozen=True)
class ModelCard:
    """Everything a consumer needs to know about an exported model, from the file alone."""

    wnids: tuple[str, ...]
    names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    preset: str | None = None
    checkpoint_sha256: str | None = None
    precision: str = "fp32"  # "fp32" | "int8" | "fp16"
    weights: str = "fp32"  # how the initializers are stored: "fp32", or "fp16" (cast at load)
    model_config: dict = field(default_factory=dict)
    val_top1: float | None = None  # measured by the export on the val images given to it
    val_top5: float | None = None
    val_images: int | None = None
    gflops: float | None = None  # per image: 2 × multiply-adds of the convs and linear layers
    cam_size: tuple[int, int] | None = None  # (h, w) of the `cam` output
    # A reduced-precision or transformed form against its reference: top1_agreement,
    # top1_change_points, max_abs_logit_diff, cam_invariant_max_error, images, reference
    parity: dict | None = None
    tta: dict | None = None  # test-time augmentation inside the graph: {"flip": bool, "size": int}
    # The temperature folded into the head (export/calibration.py): method, temperature, the
    # val split, and ECE/NLL/Brier/top-1 before and after on the half it was not fitted on.
    calibration: dict | None = None
    exported_at: str | None = None
    versions: dict = field(default_factory=dict)  # torch, onnx, onnxruntime at export time

    def __post_init__(self):
        if len(self.wnids) != len(self.names) or not self.wnids:
            raise ContractError(
                f"model metadata lists {len(self.wnids)} wnids and {len(self.names)} names"
            )

    @property
    def input(self) -> dict:
        return {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": ["N", IMAGE_SIZE, IMAGE_SIZE, 3],
            "layout": "NHWC",
            "color": "RGB",
            "resize": RESIZE_FILTER,
            "normalization": "inside the graph: (x - mean) / std",
        }

    def to_metadata(self) -> dict[str, str]:
        d = asdict(self)
        return {"format": FORMAT, **{k: json.dumps(v) for k, v in d.items()}}

    @classmethod
    def of(cls, model) -> ModelCard:
        """The card of an in-memory onnx.ModelProto (anything with metadata_props)."""
        return cls.from_metadata({p.key: p.value for p in model.metadata_props})

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str]) -> ModelCard:
        if meta.get("format") != FORMAT:
            raise ContractError(
                f"not a model exported by `python -m export` (metadata format "
                f"{meta.get('format')!r}, expected {FORMAT!r})"
            )
        try:
            d = {k: json.loads(v) for k, v in meta.items() if k != "format"}
        except json.JSONDecodeError as e:
            raise ContractError(f"unreadable model metadata: {e}") from None
        known = set(cls.__dataclass_fields__)
        missing = {"wnids", "names", "mean", "std"} - set(d)
        if missing:
            raise ContractError(f"model metadata lacks {sorted(missing)}")
        d = {k: v for k, v in d.items() if k in known}  # newer optional keys are ignored
        for k in ("wnids", "names", "mean", "std"):
            d[k] = tuple(d[k])
        if d.get("cam_size") is not None:
            d["cam_size"] = tuple(d["cam_size"])
        return cls(**d)


METADATA_KEYS = ("format", *ModelCard.__dataclass_fields__)


def random_images(n: int, seed: int = 0):
    """A uint8 batch (n, 64, 64, 3) that follows the input contract, for parity checks and
    benchmarks (numpy is imported here only: the contract itself needs none)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def int8_paths(path) -> tuple[Path, Path]:
    """The INT8 forms beside the fp32 model at `path`: (NAME.int8.onnx, NAME.int8.xml)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.int8.onnx"), path.with_name(f"{path.stem}.int8.xml")

"""Exported models in BentoML's model store, so that `bentoml build` packages the model as a
model (versioned, listed, pulled and pushed on its own) instead of a 43 MB source file.

    python -m serving.store models/model.onnx --extra models/README.md   # save; prints the tag
    TIN_MODEL=tiny-imagenet-resnet:latest bentoml serve                 # serve it
    TIN_MODEL=tiny-imagenet-resnet:latest bentoml build -f bentofile-store.yaml

A stored model is a folder: model.onnx (the served file) and the files saved with it: its INT8
forms, renamed to sit beside it as the backend looks for them (NAME.int8.onnx → model.int8.onnx,
NAME.int8.xml/.bin → model.int8.xml/.bin), and others (the model card README.md) by their names. Its
labels and metadata come from the ModelCard in model.onnx's metadata; its version is the preset and
the file's hash (tiny-imagenet-resnet:final-3f2a9c1d, whole in `bentoml models list`), so saving
the same file twice gives the same version; precision and val top-1 are labels
(`bentoml models get TAG`).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import bentoml

from common.cli import ConfigError, Parser, fail
from inference.backend import ModelFileError, read_card
from inference.contract import ModelCard

MODEL_NAME = "tiny-imagenet-resnet"
ONNX_FILE = "model.onnx"
MODULE = "tiny_imagenet.onnx"  # the `Module` column of `bentoml models list`


class StoreError(ConfigError):
    """A model spec that names no stored model, or files that cannot be stored."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def version_for(card: ModelCard, sha256: str) -> str:
    """e.g. final-3f2a9c1d: the preset and the file's hash, short enough that `bentoml models
    list` shows the whole tag (it cut tiny-imagenet-resnet:final-fp32-top1-64.64-... to
    "fina…"); precision and val top-1 are in the labels."""
    preset = re.sub(r"[^a-z0-9._-]+", "-", (card.preset or "model").lower()).strip("-._")
    return f"{(preset or 'model')[:20]}-{sha256[:8]}".lstrip("-._")


def labels_and_metadata(card: ModelCard, sha256: str, files: list[str]) -> tuple[dict, dict]:
    """Labels (strings, for filtering) and metadata (the card without the class lists, which
    stay in the file) for bentoml.models.create."""
    labels = {
        "preset": card.preset or "",
        "precision": card.precision,
        "weights": card.weights,
        "classes": str(len(card.wnids)),
        "val_top1": "" if card.val_top1 is None else f"{card.val_top1:.4f}",
    }
    metadata = {
        "val_top1": card.val_top1,
        "val_top5": card.val_top5,
        "val_images": card.val_images,
        "checkpoint_sha256": card.checkpoint_sha256,
        "onnx_sha256": sha256,
        "exported_at": card.exported_at,
        "model_config": card.model_config,
        "versions": card.versions,
        "files": files,
    }
    return labels, {k: v for k, v in metadata.items() if v is not None}


def save_model(onnx_path: str | Path, extras: Iterable[str | Path] = (), name: str = MODEL_NAME):
    """Save an exported model (and extra files, by their own names) in the model store
    (BENTOML_HOME); returns the bentoml Model. The card is read and checked first: a file that
    is not one of our exports is refused before anything is written."""
    onnx_path = Path(onnx_path)
    card = read_card(onnx_path)
    extras = [Path(p) for p in extras]
    names = [ONNX_FILE, *(stored_name(p, onnx_path) for p in extras)]
    if len(set(names)) != len(names):
        raise StoreError(f"two files would have the same name in the model folder: {names}")
    for p in extras:
        if not p.is_file():
            raise StoreError(f"extra file {p} not found")
    sha = _sha256(onnx_path)
    tag = f"{name}:{version_for(card, sha)}"
    try:
        existing = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        existing = None
    if existing is not None:
        return existing  # the same file is already stored under this version
    labels, metadata = labels_and_metadata(card, sha, names)
    with bentoml.models.create(tag, labels=labels, metadata=metadata, module=MODULE) as model:
        shutil.copyfile(onnx_path, model.path_of(ONNX_FILE))
        for p in extras:
            shutil.copyfile(p, model.path_of(stored_name(p, onnx_path)))
    return model


def stored_name(extra: Path, onnx_path: Path) -> str:
    """An extra file's name in the model folder: the model's own forms (NAME.int8.onnx, ...)
    follow model.onnx's name, so that the backend finds them beside it."""
    prefix = f"{onnx_path.stem}."
    if extra.name.startswith(prefix):
        return f"{Path(ONNX_FILE).stem}.{extra.name[len(prefix) :]}"
    return extra.name


def model_file(tag: str) -> Path:
    """model.onnx of the stored model `tag` (name or name:version; `latest` by default)."""
    try:
        model = bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        raise StoreError(
            f"TIN_MODEL={tag!r} is neither a file nor a model in BentoML's model store "
            "(BENTOML_HOME; see `bentoml models list`)"
        ) from None
    return Path(model.path_of(ONNX_FILE))


def has_model(tag: str) -> bool:
    try:
        bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True


def resolved_tag(tag: str) -> str:
    """name:version, with `latest` (or no version) resolved."""
    return str(bentoml.models.get(tag).tag)


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m serving.store", description=__doc__.split("\n")[0])
    p.add_argument("onnx", type=Path, help="the exported fp32 model, e.g. models/model.onnx")
    p.add_argument("--extra", type=Path, action="append", default=[], metavar="FILE",
                   help="another file to store with it (repeatable); default: its INT8 forms "
                   "and models/README.md beside it")  # fmt: skip
    p.add_argument("--name", default=MODEL_NAME)
    args = p.parse_args(argv)
    extras = args.extra or default_extras(args.onnx)
    try:
        print(save_model(args.onnx, extras, args.name).tag)
    except (StoreError, ModelFileError) as e:
        return fail(e)
    return 0


def default_extras(onnx_path: Path) -> list[Path]:
    """What `python -m export` writes beside the model, and the card, where they exist."""
    stem = onnx_path.with_suffix("")
    names = [f"{stem}.int8.onnx", f"{stem}.int8.xml", f"{stem}.int8.bin"]
    return [Path(n) for n in names if Path(n).is_file()] + [
        p for p in [onnx_path.parent / "README.md"] if p.is_file()
    ]


if __name__ == "__main__":
    sys.exit(main())

"""A small synthetic Tiny ImageNet in the official layout, for tests and smoke runs.

Each class is a colour and a stripe orientation under noise, so a small network can learn it; one
train and one val image are grayscale, as about 1.8% of the real set is; val images are numbered
across classes in shuffled order, so code that reads val/ as class folders fails on it.

    python -m training.fixtures OUT [--classes 4] [--train 12] [--val 4] [--zip]
"""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from common.cli import Parser

# Real Tiny ImageNet classes first, so names look like the real thing; synthetic ones after.
REAL_CLASSES = (
    ("n01443537", "goldfish, Carassius auratus"),
    ("n01629819", "European fire salamander, Salamandra salamandra"),
    ("n01641577", "bullfrog, Rana catesbeiana"),
    ("n01644900", "tailed frog, bell toad, ribbed toad, tailed toad, Ascaphus trui"),
    ("n01698640", "American alligator, Alligator mississipiensis"),
    ("n01742172", "boa constrictor, Constrictor constrictor"),
    ("n01768244", "trilobite"),
    ("n01770393", "scorpion"),
    ("n01774384", "black widow, Latrodectus mactans"),
    ("n01774750", "tarantula"),
)


def class_list(classes: int) -> list[tuple[str, str]]:
    extra = [
        (f"n9{i:07d}", f"synthetic class {i}, class {i}") for i in range(len(REAL_CLASSES), classes)
    ]
    return list(REAL_CLASSES[:classes]) + extra


def synthetic_image(label: int, classes: int, rng: np.random.Generator) -> np.ndarray:
    """64×64×3 uint8: a per-class hue and stripe angle, a random phase, and pixel noise."""
    hue = label / classes
    colour = 255 * (0.5 + 0.5 * np.cos(2 * np.pi * (hue + np.array([0.0, 1 / 3, 2 / 3]))))
    angle = np.pi * label / classes
    yy, xx = np.mgrid[0:64, 0:64]
    wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / 16 + rng.uniform(0, 6.3))
    img = colour * (0.65 + 0.35 * wave[..., None]) + rng.normal(0, 12, (64, 64, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(img: np.ndarray, path: Path, gray: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(img)
    (im.convert("L") if gray else im).save(path, format="JPEG", quality=90)


def write_fixture(
    out: str | Path, *, classes: int = 4, train: int = 12, val: int = 4, seed: int = 0
) -> Path:
    """Write `out`/tiny-imagenet-200 with `train` and `val` images per class; return its path."""
    rng = np.random.default_rng(seed)
    root = Path(out) / "tiny-imagenet-200"
    if root.exists():
        shutil.rmtree(root)
    pairs = class_list(classes)
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w, _ in pairs))
    # words.txt covers far more than the chosen classes, like the real 82k-line file.
    words = [*pairs, ("n00001740", "entity"), ("n99999999", "unused, not a class")]
    (root / "words.txt").write_text("".join(f"{w}\t{n}\n" for w, n in sorted(words)))
    for label, (wnid, _) in enumerate(pairs):
        boxes = []
        for i in range(train):
            name = f"{wnid}_{i}.JPEG"
            gray = label == 0 and i == 1
            _save(
                synthetic_image(label, classes, rng), root / "train" / wnid / "images" / name, gray
            )
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    labels = rng.permutation(np.repeat(np.arange(classes), val))
    lines = []
    for i, label in enumerate(labels):
        gray = i == 0
        _save(
            synthetic_image(int(label), classes, rng),
            root / "val" / "images" / f"val_{i}.JPEG",
            gray,
        )
        lines.append(f"val_{i}.JPEG\t{pairs[label][0]}\t0\t0\t63\t63\n")
    (root / "val" / "val_annotations.txt").write_text("".join(lines))
    _save(synthetic_image(0, classes, rng), root / "test" / "images" / "test_0.JPEG")
    return root


def zip_folder(root: str | Path, zip_path: str | Path) -> Path:
    """Zip `root` (a tiny-imagenet-200 folder) the way the official archive is laid out."""
    root, zip_path = Path(root), Path(zip_path)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                zf.write(path, f"{root.name}/{path.relative_to(root).as_posix()}")
    return zip_path


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m training.fixtures", description=__doc__.split("\n")[0])
    p.add_argument("out", help="folder to write tiny-imagenet-200/ into")
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--train", type=int, default=12, help="train images per class")
    p.add_argument("--val", type=int, default=4, help="val images per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zip", action="store_true", help="also write tiny-imagenet-200.zip beside it")
    args = p.parse_args(argv)
    for name in ("classes", "train", "val"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    root = write_fixture(
        args.out, classes=args.classes, train=args.train, val=args.val, seed=args.seed
    )
    print(root)
    if args.zip:
        print(zip_folder(root, Path(args.out) / "tiny-imagenet-200.zip"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

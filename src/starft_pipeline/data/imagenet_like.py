"""An ImageNet-shaped folder tree of small synthetic JPEGs, to measure the data path at scale on a CPU.

``<root>/train/<wnid>/<wnid>_<i>.JPEG`` and ``<root>/val/<wnid>/ILSVRC2012_val_<k>.JPEG``, 1,000
WordNet-id-shaped class folders (``n00000000`` …), images of varied sizes and aspect ratios (so the
resize and centre crop do real work), deterministic from a seed. Read it with the ImageFolder
reader (``format: image_folder``), e.g. the ``imagenet_like`` configuration environment. No Kedro.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

N_CLASSES = 1000


def wnid(label: int) -> str:
    return f"n{label:08d}"


def _image(rng: np.random.Generator, label: int, min_side: int, max_side: int) -> Image.Image:
    """A class-coloured gradient with noise, ``min_side``…``max_side`` px on each side."""
    width, height = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
    colour = np.array([(label * 37) % 256, (label * 91) % 256, (label * 53) % 256], dtype=np.float32)
    ramp = np.linspace(0.5, 1.0, width, dtype=np.float32)[None, :, None]
    noise = rng.normal(0.0, 20.0, size=(height, width, 3)).astype(np.float32)
    pixels = np.clip(colour * ramp + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def write_imagenet_like(
    root: str | Path,
    train_per_class: int,
    val_per_class: int,
    n_classes: int = N_CLASSES,
    seed: int = 0,
    min_side: int = 40,
    max_side: int = 80,
) -> dict[str, int]:
    """Write the tree (files already there are kept, so a rerun is cheap); returns images per split."""
    root = Path(root)
    counts = {"train": 0, "val": 0}
    for label in range(n_classes):
        rng = np.random.default_rng([seed, label])
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            folder = root / split / wnid(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                name = (
                    f"{wnid(label)}_{i}.JPEG"
                    if split == "train"
                    else f"ILSVRC2012_val_{label * per_class + i:08d}.JPEG"
                )
                image = _image(rng, label, min_side, max_side)  # drawn even when the file exists: same stream
                path = folder / name
                if not path.is_file():
                    image.save(path, format="JPEG", quality=90)
                counts[split] += 1
    return counts

"""Write an ImageNet-shaped folder tree of small JPEGs (1,000 classes) for the memory benchmark.

    python benchmarks/make_imagenet_like.py data/01_raw/imagenet_like_10k --train-per-class 8 --val-per-class 2

prints the image counts. See docs/data-at-scale.md.
"""

from __future__ import annotations

import argparse
import time

from starft_pipeline.data.imagenet_like import N_CLASSES, write_imagenet_like


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--train-per-class", type=int, default=8)
    parser.add_argument("--val-per-class", type=int, default=2)
    parser.add_argument("--classes", type=int, default=N_CLASSES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    counts = write_imagenet_like(args.root, args.train_per_class, args.val_per_class, args.classes, args.seed)
    print(
        f"{args.root}: {counts['train']} train + {counts['val']} val images, {args.classes} classes "
        f"({time.perf_counter() - start:.1f} s)"
    )


if __name__ == "__main__":
    main()

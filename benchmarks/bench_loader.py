"""Training loader throughput on this machine: 224 px shards against the original JPEGs + resize.

    OMP_NUM_THREADS=1 python benchmarks/bench_loader.py                 # 768 images of 375–500 px, 1 and 2 workers
    OMP_NUM_THREADS=1 python benchmarks/bench_loader.py --images 2048 --workers 1 2 4

Writes an ImageNet-shaped tree (``data.imagenet_like``: class-coloured gradients with noise, 375–500 px
a side, JPEG q90; noise decodes slower than photos, so these figures are pessimistic) to a temporary
folder, writes its train split as 224 px shards (``data.shards.write_shards``, what the shards stage
does), then times the fine-tuning loop's own streamed source over shuffled batches of 256: the
original files (``streaming.StreamedImages``: decode + resize + crop in the workers) and the shards
(``shards.streamed_shards``, ``decode: cpu``: a 224 px JPEG decode in the workers), with N loader
workers each. Each source runs 3 passes (epochs) over the split with its persistent workers; the first
pass (worker start-up) is not counted. The batch handed to the step is the loader's own (pinned with
CUDA; no CUDA here, so nothing is pinned). Prints, first, images per CPU second of one in-process
pass (``num_workers=0``; CPU time, so a core's worth whatever else loads the machine), then wall-clock
img/s and img/s per worker, and the shards/originals ratios; the target is ≥ 800 img/s per worker from shards (an H200 trains ViT-B/16 at ≈ 2,900 img/s:
4 workers' worth). The CPU may be shared: compare figures of one run only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from starft_pipeline.data.imagenet_like import write_imagenet_like
from starft_pipeline.data.shards import streamed_shards, write_shards
from starft_pipeline.data.splits import GroupSplit, read_image_folder, split_of
from starft_pipeline.data.streaming import StreamedImages

IMAGE_SIZE = 224
BATCH = 256
PASSES = 3
TARGET_PER_WORKER = 800.0
ORIGINALS, SHARDS = "originals (decode+resize)", "shards 224 px (cpu decode)"


def _images_per_s(source: StreamedImages, n_images: int, seed: int = 0) -> float:
    """Images/s of passes 2…PASSES (pass 1 starts the persistent workers), each a new shuffle."""
    elapsed = 0.0
    for epoch in range(PASSES):
        order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed + epoch))
        batches = list(order.split(BATCH))
        start = time.perf_counter()
        for batch, _ in zip(batches, source.steps(batches)):
            assert source[batch].shape == (len(batch), 3, IMAGE_SIZE, IMAGE_SIZE)
        if epoch:
            elapsed += time.perf_counter() - start
    return n_images * (PASSES - 1) / elapsed


def _images_per_cpu_s(source: StreamedImages, n_images: int) -> float:
    """Images per CPU second of this process reading one pass in-process (``num_workers=0``): what one
    worker decodes per second of a core it has to itself, whatever else shares the machine."""
    batches = list(torch.arange(n_images).split(BATCH))
    start = time.process_time()
    for batch, _ in zip(batches, source.steps(batches)):
        assert source[batch].shape == (len(batch), 3, IMAGE_SIZE, IMAGE_SIZE)
    return n_images / (time.process_time() - start)


def _row(name: str, workers: int, rate: float) -> None:
    print(f"{name:<28} {workers:>7} {rate:>10,.0f} {rate / max(workers, 1):>14,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=768, help="training images (8 per class)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--root", default=None, help="a folder to keep the tree and shards in (default: temporary)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.root or scratch)
        start = time.perf_counter()
        write_imagenet_like(root / "tree", 8, 0, n_classes=max(1, args.images // 8), min_side=375, max_side=500)
        split: GroupSplit = split_of(
            read_image_folder(root / "tree" / "train", "train"), root / "tree" / "train", "train", n_places=1
        )
        print(f"{len(split)} JPEGs of 375–500 px written in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        folder = write_shards(split, IMAGE_SIZE, root / "shards", rows_per_shard=256, num_workers=max(args.workers))
        took = time.perf_counter() - start
        print(
            f"shards: {len(split)} images at {IMAGE_SIZE} px in {took:.1f} s ({len(split) / took:,.0f} img/s, "
            f"{max(args.workers)} processes)\n"
        )
        sources: dict[str, Callable[[int], StreamedImages]] = {
            ORIGINALS: lambda w: StreamedImages(split, IMAGE_SIZE, num_workers=w, pin_memory=True),
            SHARDS: lambda w: streamed_shards(folder, split, IMAGE_SIZE, w, pin_memory=True),
        }
        print("per CPU second (in-process, num_workers=0: one core's worth, independent of other load):")
        per_core = {name: _images_per_cpu_s(make(0), len(split)) for name, make in sources.items()}
        for name, rate in per_core.items():
            print(f"  {name:<28} {rate:>8,.0f} img/s per core ({1000 / rate:.2f} ms/image)")
        verdict = "meets" if per_core[SHARDS] >= TARGET_PER_WORKER else "misses"
        print(f"  shards {verdict} the {TARGET_PER_WORKER:,.0f} img/s per worker target")
        print(f"  shards / originals per core: {per_core[SHARDS] / per_core[ORIGINALS]:.2f}x\n")
        print("wall clock with N persistent workers (shared CPU: depends on the machine's load):")
        print(f"{'source':<28} {'workers':>7} {'img/s':>10} {'img/s/worker':>14}")
        rates: dict[tuple[str, int], float] = {}
        for workers in args.workers:
            for name, make in sources.items():
                rates[name, workers] = _images_per_s(make(workers), len(split))
                _row(name, workers, rates[name, workers])
        print()
        for workers in args.workers:
            ratio = rates[SHARDS, workers] / rates[ORIGINALS, workers]
            print(f"{workers} worker(s): shards / originals = {ratio:.2f}x (wall clock)")
        print(
            f"CUDA: {torch.cuda.is_available()} (batches pinned only with CUDA); torch threads: {torch.get_num_threads()}"
        )


if __name__ == "__main__":
    main()

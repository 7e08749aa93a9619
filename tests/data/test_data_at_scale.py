"""The data path at scale: streamed batches equal the whole-split decode, the teacher's streamed,
part-by-part and two-rank features equal the whole-split ones, and a loaded cache is memory-mapped."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from starft_pipeline.core.distributed import DistContext, all_gather_rows, shard_rows
from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data.imagenet_like import write_imagenet_like
from starft_pipeline.data.splits import load_split_images, normalise_images, read_image_folder, split_of
from starft_pipeline.data.streaming import split_batches
from starft_pipeline.models.clip import encode_images
from starft_pipeline.models.teacher import EncodeSettings, FeatureParts, _features_of, part_ranges, split_features
from tests.engine_helpers import single_thread, tiny_model  # noqa: F401 (autouse)

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """11 JPEGs of varied sizes in an ImageNet-shaped tree (the resize and centre crop do work)."""
    root = tmp_path_factory.mktemp("imagenet_like")
    write_imagenet_like(root, train_per_class=1, val_per_class=0, n_classes=11)
    return split_of(read_image_folder(root / "train", "train"), root / "train", "train", n_places=1)


def _whole_split_features(loaded, split, batch_size: int) -> torch.Tensor:
    """What the teacher computed before streaming: decode all, normalise all, encode in batches."""
    pixels = normalise_images(load_split_images(split, IMAGE_SIZE), loaded.image_mean, loaded.image_std)
    return encode_images(loaded.model, pixels, batch_size=batch_size)


def test_streamed_batches_equal_the_whole_split_decode(split):
    whole = load_split_images(split, IMAGE_SIZE)
    batches = list(split_batches(split, IMAGE_SIZE, 4))
    assert [len(rows) for _, rows in batches] == [4, 4, 3]
    images, rows = torch.cat([b for b, _ in batches]), torch.cat([r for _, r in batches])
    assert images.dtype == torch.uint8 and rows.dtype == torch.int64
    assert torch.equal(images, whole) and torch.equal(rows, torch.arange(len(split)))


def test_streamed_rows_through_workers(split):
    chosen = [9, 2, 5, 0, 10]
    batches = list(split_batches(split, IMAGE_SIZE, 2, num_workers=2, rows=chosen))
    images, rows = torch.cat([b for b, _ in batches]), torch.cat([r for _, r in batches])
    assert rows.tolist() == chosen
    assert torch.equal(images, load_split_images(split, IMAGE_SIZE)[chosen])


def test_rows_outside_the_split_are_an_error(split):
    with pytest.raises(IndexError, match=r"rows \[11\] are outside the split of 11 images"):
        next(split_batches(split, IMAGE_SIZE, 4, rows=[0, 11]))


def test_streamed_teacher_features_equal_the_whole_split_ones(split):
    loaded = tiny_model()
    expected = _whole_split_features(loaded, split, batch_size=4)
    assert torch.equal(split_features(loaded, split, 4, torch.device("cpu")), expected)


def test_teacher_parts_are_kept_and_reused(split, tmp_path: Path):
    loaded = tiny_model()
    parts = FeatureParts(tmp_path, "0123456789abcdef")
    settings = EncodeSettings(batch_size=4, part_rows=5)
    assert part_ranges(11, 5) == [(0, 5), (5, 10), (10, 11)] and part_ranges(0, 5) == [(0, 0)]
    first = _features_of(loaded, "d/train", split, parts, settings)
    # other batch compositions ([4, 1] per part): equal up to float rounding
    assert torch.allclose(first, _whole_split_features(loaded, split, batch_size=4), atol=1e-6)
    names = sorted(path.name for path in parts.folder.iterdir())
    assert names == [
        "d%2Ftrain%5B0%3A5%5D.safetensors",
        "d%2Ftrain%5B10%3A11%5D.safetensors",
        "d%2Ftrain%5B5%3A10%5D.safetensors",
    ]
    marked = torch.full_like(first[5:10], 7.0)  # a reused part is read, not recomputed
    parts.save("d/train[5:10]", marked)
    second = _features_of(loaded, "d/train", split, parts, settings)
    assert torch.equal(second[5:10], marked) and torch.equal(second[:5], first[:5])


def test_rank_shares_cover_the_rows_in_order():
    for n_rows in (0, 1, 7, 10):
        shares = [shard_rows(n_rows, DistContext(rank, 3, rank)) for rank in range(3)]
        assert [row for share in shares for row in share] == list(range(n_rows))
    assert all_gather_rows(torch.ones(2, 3), DistContext()).shape == (2, 3)  # one process: as is


def test_a_loaded_bundle_is_a_private_memory_map(tmp_path: Path):
    path = tmp_path / "cache.safetensors"
    original = {"image/d/train": torch.randn(6, 4), "labels": torch.arange(3), "half": torch.randn(5).half()}
    TensorBundle(original, {"fingerprint": "abc"}).save(path)
    loaded = TensorBundle.load(path)
    assert all(torch.equal(loaded.tensors[key], value) for key, value in original.items())
    assert loaded.metadata == {"fingerprint": "abc"}
    assert str(path) in Path("/proc/self/maps").read_text()  # mapped, not read into anonymous memory
    loaded.tensors["image/d/train"].zero_()  # copy-on-write: the file keeps its values
    assert torch.equal(TensorBundle.load(path).tensors["image/d/train"], original["image/d/train"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _teacher_rank(rank: int, port: int, root: str, out_dir: str) -> None:
    """One gloo rank started as torchrun would; encodes its share of each part, rank 0 saves the result."""
    import os

    import torch.distributed as dist

    from starft_pipeline.core.distributed import init_from_env

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    context, _ = init_from_env(torch.device("cpu"))
    try:
        split = split_of(read_image_folder(Path(root) / "train", "train"), Path(root) / "train", "train", n_places=1)
        parts = FeatureParts(out_dir, "0123456789abcdef")
        features = _features_of(
            tiny_model(), "d/train", split, parts, EncodeSettings(batch_size=4, part_rows=5), context
        )
        torch.save(features, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and build the model (~30 s on 2 busy cores)
def test_two_ranks_encode_what_one_process_encodes(split, tmp_path: Path):
    root = split.paths[0].parents[2]
    mp.spawn(_teacher_rank, args=(_free_port(), str(root), str(tmp_path)), nprocs=2, join=True)
    expected = _whole_split_features(tiny_model(), split, batch_size=4)
    for rank in (0, 1):  # every rank holds the whole result (later nodes of rank 1 read it in memory)
        assert torch.allclose(torch.load(tmp_path / f"rank{rank}.pt"), expected, atol=1e-6)
    assert len(list((tmp_path / "0123456789abcdef").iterdir())) == 3  # rank 0 wrote each part once


def test_shards_hold_the_streamed_images_and_read_by_row(split, tmp_path: Path):
    from starft_pipeline.data.shards import shard_batches, write_shards

    folder = write_shards(split, IMAGE_SIZE, tmp_path / "d" / "train", rows_per_shard=4)
    assert len(list(folder.glob("shard-*.tar"))) == 3
    chosen = [10, 3, 4, 0]
    batches = list(shard_batches(folder, split, IMAGE_SIZE, 3, num_workers=1, rows=chosen))
    images, rows = torch.cat([b for b, _ in batches]), torch.cat([r for _, r in batches])
    assert rows.tolist() == chosen and images.dtype == torch.uint8 and images.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    original = load_split_images(split, IMAGE_SIZE)[chosen].float()
    assert (images.float() - original).abs().mean() < 4.0  # JPEG (quality 95, 4:4:4) of the same noisy pixels
    with pytest.raises(FileNotFoundError, match="holds no shards of this split at 48 px"):
        next(shard_batches(folder, split, 48, 3))


def test_gpu_decode_falls_back_and_its_batch_decoder_matches_pil(split, tmp_path: Path, caplog):
    import logging

    from starft_pipeline.data.shards import ShardImages, decode_jpeg_batch, shard_batches, write_shards

    folder = write_shards(split, IMAGE_SIZE, tmp_path / "s", rows_per_shard=8)
    with caplog.at_level(logging.INFO, logger="starft_pipeline.data.shards"):
        fallback = torch.cat([b for b, _ in shard_batches(folder, split, IMAGE_SIZE, 4, decode="gpu")])
    if not torch.cuda.is_available():
        assert "decoding in the CPU loader workers" in caplog.text
    cpu = torch.cat([b for b, _ in shard_batches(folder, split, IMAGE_SIZE, 4)])
    assert torch.equal(fallback.cpu(), cpu) or torch.cuda.is_available()
    # the GPU branch's logic (bytes from the workers, one batched decode) run on the CPU
    payloads = [ShardImages(folder, split, IMAGE_SIZE, decode="gpu")[row][0] for row in range(4)]
    decoded = decode_jpeg_batch(payloads, torch.device("cpu"))
    assert decoded.shape == (4, 3, IMAGE_SIZE, IMAGE_SIZE)
    assert (decoded.float() - cpu[:4].float()).abs().max() <= 2  # libjpeg vs PIL: off by rounding at most

"""Pre-processed image shards in the WebDataset layout, and the GPU decode path.

A split is written once as tar files ``<folder>/shard-000000.tar`` … of ``rows_per_shard`` samples;
sample ``k`` (the split's row ``k``) is ``{k:09d}.jpg`` (the image exactly as the model sees it:
shorter side resized to S and centre-cropped, as :func:`~starft_pipeline.data.splits.load_image` makes it,
then JPEG-encoded) and ``{k:09d}.cls`` (its label). ``index.json`` records the image size, the rows
and a fingerprint of the split's files, so a stale folder is rewritten rather than silently read.
These are plain tar files (no ``webdataset`` dependency): ``webdataset.WebDataset`` and open_clip's
training read them as they are. This module reads them by row instead (an index of each member's
offset), which keeps :func:`shard_batches` to :func:`~starft_pipeline.data.streaming.split_batches`'
contract: any rows, in order, through DataLoader workers.

Decoding: ``cpu`` decodes the JPEGs in the workers (PIL); ``gpu`` has the workers read the bytes only
and decodes each batch on the device (``torchvision.io.decode_jpeg(..., device="cuda")``), falling
back to ``cpu`` (logged) without CUDA. No Kedro.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import multiprocessing
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from starft_pipeline.core.distributed import SINGLE_PROCESS, DistContext
from starft_pipeline.core.io_utils import atomic_path, fingerprint
from starft_pipeline.data.splits import GroupSplit, load_image
from starft_pipeline.data.streaming import (
    DataLoading,
    ImageSource,
    RowOptions,
    StreamedImages,
    announce_loading,
    row_loader,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

Decode = Literal["cpu", "gpu"]
T = TypeVar("T")
DECODES: tuple[str, ...] = get_args(Decode)
DEFAULT_ROWS_PER_SHARD = 10_000
JPEG_QUALITY = 95
INDEX = "index.json"
#: Seconds between progress log lines (a long write on a cluster, where no terminal shows tqdm).
PROGRESS_EVERY_S = 30.0


def _split_identity(split: GroupSplit, image_size: int) -> str:
    return fingerprint([str(path) for path in split.paths], split.labels.tolist(), image_size, JPEG_QUALITY, "4:4:4")


def _jpeg(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(
        buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0
    )  # 4:4:4: no chroma blur
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def shards_are_current(folder: str | Path, split: GroupSplit, image_size: int) -> bool:
    path = Path(folder) / INDEX
    if not path.is_file():
        return False
    index = json.loads(path.read_text())
    return index.get("identity") == _split_identity(split, image_size) and index.get("rows") == len(split)


@dataclass(frozen=True)
class ShardFile:
    """One tar file of a split: its name and the split's rows ``[first, first + rows)`` it holds."""

    file: str
    first: int
    rows: int


def shard_plan(split: GroupSplit, image_size: int, rows_per_shard: int) -> list[ShardFile]:
    """The split's tar files. Their names carry the split's identity, so a file already on disk under
    that name holds exactly these images (written atomically): a killed run resumes file by file."""
    if rows_per_shard < 1:
        raise ValueError(f"shards rows_per_shard must be >= 1, got {rows_per_shard}")
    tag = fingerprint(_split_identity(split, image_size), rows_per_shard)[:10]
    return [
        ShardFile(f"shard-{tag}-{first // rows_per_shard:06d}.tar", first, min(rows_per_shard, len(split) - first))
        for first in range(0, len(split), rows_per_shard)
    ]


def _write_shard_file(path: Path, paths: list[Path], labels: list[int], first: int, image_size: int) -> int:
    """Decode, resize, crop and JPEG-encode rows ``first …`` into the tar ``path`` (runs in a pool process:
    it gets only its own rows' paths and labels, not the split)."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
        for offset, (image_path, label) in enumerate(zip(paths, labels)):
            row = first + offset
            _add(tar, f"{row:09d}.jpg", _jpeg(load_image(image_path, image_size)))
            _add(tar, f"{row:09d}.cls", str(label).encode())
    return len(paths)


def _pool(num_workers: int) -> Executor:
    """``num_workers`` encoding processes (forked: nothing to import again); 0: this process."""
    if num_workers == 0:
        return _InProcess()
    return ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("fork"))


class _InProcess(Executor):
    """An executor that runs each task when it is submitted (``num_workers: 0``)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


class _Progress:
    """Images written so far: a tqdm bar on a terminal, and a log line (images/s, ETA) every ``every_s``."""

    def __init__(self, total: int, description: str, every_s: float = PROGRESS_EVERY_S) -> None:
        from tqdm.auto import tqdm

        self.total, self.description, self.every_s = total, description, every_s
        self.done, self.start, self.logged = 0, time.monotonic(), time.monotonic()
        self.bar = tqdm(total=total, desc=description, dynamic_ncols=True, disable=None)

    def add(self, images: int) -> None:
        self.done += images
        self.bar.update(images)
        now = time.monotonic()
        if now - self.logged >= self.every_s or self.done == self.total:
            self.logged = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate else float("inf")
            logger.info(
                "%s: %d / %d images, %.0f images/s, ETA %.0f s", self.description, self.done, self.total, rate, eta
            )

    def close(self) -> None:
        self.bar.close()


def _wait_until(done: Callable[[], bool], what: str, poll_s: float = 1.0) -> None:
    """Poll the file system until ``done()`` (not a collective: no process-group timeout applies, however
    long the other ranks take; torchrun ends this process if another rank fails)."""
    last_log = time.monotonic()
    while not done():
        if time.monotonic() - last_log >= PROGRESS_EVERY_S:
            logger.info("shards: waiting for %s", what)
            last_log = time.monotonic()
        time.sleep(poll_s)


def write_shards(
    split: GroupSplit,
    image_size: int,
    folder: str | Path,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    num_workers: int = 0,
    context: DistContext = SINGLE_PROCESS,
) -> Path:
    """Write ``split`` as shards under ``folder`` unless the ones there are of this split and size.

    The tar files are encoded in parallel by ``num_workers`` processes (0: this one). Under torchrun
    (``context``) rank ``r`` writes the files ``r, r + W, …``; rank 0 then writes ``index.json`` once
    every file is there, and the other ranks wait for it, all by polling the folder: nobody waits in a
    collective, whose timeout a long write would exceed.
    """
    folder = Path(folder)
    if shards_are_current(folder, split, image_size):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(split, image_size, rows_per_shard)
    mine = [shard for number, shard in enumerate(plan) if number % context.world_size == context.rank]
    todo = [shard for shard in mine if not (folder / shard.file).exists()]
    progress = _Progress(sum(shard.rows for shard in todo), f"shards {split.name}")
    try:
        with _pool(num_workers) as pool:
            futures = [
                pool.submit(
                    _write_shard_file,
                    folder / shard.file,
                    list(split.paths[shard.first : shard.first + shard.rows]),
                    [int(label) for label in split.labels[shard.first : shard.first + shard.rows]],
                    shard.first,
                    image_size,
                )
                for shard in todo
            ]
            for future in as_completed(futures):
                progress.add(future.result())
    finally:
        progress.close()
    if context.is_main:
        files = [folder / shard.file for shard in plan]
        _wait_until(lambda: all(path.exists() for path in files), f"the other ranks' tar files under {folder}")
        _write_index(split, image_size, folder, plan)
    else:
        _wait_until(lambda: shards_are_current(folder, split, image_size), f"rank 0's {folder / INDEX}")
    return folder


def _write_index(split: GroupSplit, image_size: int, folder: Path, plan: Sequence[ShardFile]) -> None:
    index = {
        "identity": _split_identity(split, image_size),
        "rows": len(split),
        "image_size": image_size,
        "shards": [dataclasses.asdict(shard) for shard in plan],
    }
    with atomic_path(folder / INDEX) as tmp:
        Path(tmp).write_text(json.dumps(index, indent=1))
    current = {shard.file for shard in plan}
    for stale in folder.glob("shard-*.tar"):  # files of an earlier split or size
        if stale.name not in current:
            stale.unlink(missing_ok=True)
    logger.info("shards: wrote %d images of %s in %d tar files under %s", len(split), split.name, len(plan), folder)


@dataclass(frozen=True)
class _Member:
    shard: int
    offset: int
    size: int


class ShardImages(Dataset):
    """Row ``k`` of a sharded split: its uint8 image (``decode="cpu"``) or its JPEG bytes (``"gpu"``)."""

    def __init__(self, folder: str | Path, split: GroupSplit, image_size: int, decode: Decode = "cpu") -> None:
        self.folder = Path(folder)
        if not shards_are_current(self.folder, split, image_size):
            raise FileNotFoundError(
                f"{self.folder} holds no shards of this split at {image_size} px (missing, or written from other "
                "files or at another size); write them with the shards stage (`kedro run --pipelines=shards`, shards.folder)"
            )
        index = json.loads((self.folder / INDEX).read_text())
        self.files = [self.folder / shard["file"] for shard in index["shards"]]
        # offsets of each row's .jpg member: 3 int64 per row (not one Python object per row)
        self.members = np.zeros((len(split), 3), dtype=np.int64)
        for number, path in enumerate(self.files):
            with tarfile.open(path) as tar:
                for member in tar:
                    if member.name.endswith(".jpg"):
                        self.members[int(member.name[:-4])] = (number, member.offset_data, member.size)
        self.decode = decode
        self.image_size = image_size
        self._handles: dict[int, io.BufferedReader] = {}

    def __len__(self) -> int:
        return len(self.members)

    def _bytes(self, row: int) -> bytes:
        number, offset, size = (int(v) for v in self.members[row])
        handle = self._handles.get(number)
        if handle is None:  # opened lazily: each worker process holds its own handles
            handle = self._handles[number] = open(self.files[number], "rb")  # noqa: SIM115
        handle.seek(offset)
        return handle.read(size)

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int]:
        payload = self._bytes(row)
        if self.decode == "gpu":
            return torch.frombuffer(bytearray(payload), dtype=torch.uint8), row
        return load_image(io.BytesIO(payload), self.image_size), row

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}


def keep_bytes(samples: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The GPU decode's collate: the samples' JPEG byte tensors as a list (sizes differ), their rows as a tensor."""
    payloads, rows = zip(*samples)
    return list(payloads), torch.tensor(rows, dtype=torch.int64)


def decode_jpeg_batch(payloads: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A batch of S×S JPEGs (uint8 byte tensors) as uint8 (B, 3, S, S) on ``device`` (torchvision's decoder)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    images = decode_jpeg(list(payloads), mode=ImageReadMode.RGB, device=device)
    return torch.stack(images)


def resolve_decode(decode: str) -> Decode:
    """``gpu`` only where CUDA is; else ``cpu``, with a log line."""
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}; got {decode!r}")
    if decode == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        logger.info("decode: gpu asked for but CUDA is not available; decoding in the CPU loader workers")
        return "cpu"
    return "gpu"


def shard_batches(
    folder: str | Path,
    split: GroupSplit,
    image_size: int,
    batch_size: int,
    *,
    decode: Decode = "cpu",
    device: torch.device | None = None,
    **options: Unpack[RowOptions],
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`~starft_pipeline.data.streaming.split_batches` from the shards under ``folder``: (uint8 images,
    int64 rows) in order. ``decode="gpu"`` returns the images on ``device`` (default: the current CUDA device)."""
    decode = resolve_decode(decode)
    dataset = ShardImages(folder, split, image_size, decode)
    loader = row_loader(
        dataset,
        len(split),
        batch_size,
        options,
        pin_memory=decode == "cpu",
        collate_fn=keep_bytes if decode == "gpu" else None,
    )
    for images, indices in loader or ():
        if decode == "gpu":
            images = decode_jpeg_batch(images, device or torch.device("cuda"))
        yield images, indices.to(torch.int64)


def streamed_shards(
    folder: str | Path,
    split: GroupSplit,
    image_size: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    decode: Decode = "cpu",
    device: torch.device | None = None,
) -> StreamedImages:
    """The training loop's streamed source read from the shards under ``folder``: the workers decode
    (``cpu``), or read the bytes that ``device`` decodes batch by batch (``gpu``)."""
    dataset = ShardImages(folder, split, image_size, resolve_decode(decode))
    if dataset.decode == "cpu":
        return StreamedImages(split, image_size, num_workers, pin_memory, dataset=dataset)
    on_device = functools.partial(decode_jpeg_batch, device=device or torch.device("cuda"))
    return StreamedImages(
        split, image_size, num_workers, pin_memory, dataset=dataset, collate_fn=keep_bytes, decode_batch=on_device
    )


def train_images_from_shards(
    folder: str | Path,
    split: GroupSplit,
    image_size: int,
    mode: DataLoading = "auto",
    memory_limit_gb: float = 4.0,
    num_workers: int = 0,
    pin_memory: bool = False,
    decode: Decode = "cpu",
    device: torch.device | None = None,
) -> ImageSource:
    """:func:`~starft_pipeline.data.streaming.train_images` from the shards under ``folder``: the same
    choice of memory or stream, the images decoded from the shards instead of the original files."""
    chosen = announce_loading(mode, len(split), image_size, memory_limit_gb, str(folder))
    if chosen == "stream":
        return streamed_shards(folder, split, image_size, num_workers, pin_memory, decode, device)
    batches = [images for images, _ in shard_batches(folder, split, image_size, 256, num_workers=num_workers)]
    return torch.cat(batches) if batches else torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)

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

import io
import json
import logging
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from starft_pipeline.core.io_utils import atomic_path, fingerprint
from starft_pipeline.data.splits import GroupSplit, load_image
from starft_pipeline.data.streaming import RowOptions, row_loader

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

Decode = Literal["cpu", "gpu"]
DECODES: tuple[str, ...] = get_args(Decode)
DEFAULT_ROWS_PER_SHARD = 10_000
JPEG_QUALITY = 95
INDEX = "index.json"


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


def write_shards(
    split: GroupSplit,
    image_size: int,
    folder: str | Path,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    num_workers: int = 0,
) -> Path:
    """Write ``split`` as shards under ``folder`` unless the ones there are of this split and size."""
    from starft_pipeline.data.streaming import split_batches  # the one decode path: the shards hold exactly its images

    folder = Path(folder)
    if shards_are_current(folder, split, image_size):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for first in range(0, len(split), rows_per_shard):
        rows = range(first, min(first + rows_per_shard, len(split)))
        name = f"shard-{first // rows_per_shard:06d}.tar"
        with atomic_path(folder / name) as tmp, tarfile.open(tmp, "w") as tar:
            for images, indices in split_batches(split, image_size, 256, num_workers=num_workers, rows=rows):
                for image, row in zip(images, indices.tolist()):
                    _add(tar, f"{row:09d}.jpg", _jpeg(image))
                    _add(tar, f"{row:09d}.cls", str(int(split.labels[row])).encode())
        shards.append({"file": name, "first": rows.start, "rows": len(rows)})
    index = {
        "identity": _split_identity(split, image_size),
        "rows": len(split),
        "image_size": image_size,
        "shards": shards,
    }
    with atomic_path(folder / INDEX) as tmp:
        Path(tmp).write_text(json.dumps(index, indent=1))
    logger.info("shards: wrote %d images of %s in %d tar files under %s", len(split), split.name, len(shards), folder)
    return folder


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
                "files or at another size); write them with starft_pipeline.data.shards.write_shards (teacher.shards)"
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


def _keep_bytes(samples: list[tuple[torch.Tensor, int]]) -> tuple[list[torch.Tensor], torch.Tensor]:
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
        collate_fn=_keep_bytes if decode == "gpu" else None,
    )
    for images, indices in loader or ():
        if decode == "gpu":
            images = decode_jpeg_batch(images, device or torch.device("cuda"))
        yield images, indices.to(torch.int64)

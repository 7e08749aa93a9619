"""The shards stage and its readers: every split written once (in parallel, by several ranks without a
collective), fine-tuning and evaluation from shards equal to the same pre-resized images read another
way, a streamed source whose workers persist across passes and whose step batch is not copied."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from starft_pipeline.core.distributed import DistContext
from starft_pipeline.data.imagenet_like import write_imagenet_like
from starft_pipeline.data.shards import INDEX, shard_batches, streamed_shards, train_images_from_shards, write_shards
from starft_pipeline.data.splits import GroupSplit, read_image_folder, split_of
from starft_pipeline.data.streaming import StreamedImages, pins_batches
from starft_pipeline.data.tasks import EvalTask
from starft_pipeline.evaluate.predictions import ModelUnderTest, PassSettings, SplitToEvaluate, one_pass_predictions
from starft_pipeline.train.finetune import finetune
from tests.engine_helpers import single_thread, tiny_config, tiny_model, tiny_train_data  # noqa: F401 (autouse)

IMAGE_SIZE = 32
N_CLASSES = 11


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> GroupSplit:
    """11 JPEGs of varied sizes in an ImageNet-shaped tree (the resize and centre crop do work)."""
    root = tmp_path_factory.mktemp("imagenet_like")
    write_imagenet_like(root, train_per_class=1, val_per_class=0, n_classes=N_CLASSES)
    return split_of(read_image_folder(root / "train", "train"), root / "train", "train", n_places=1)


def _png_split(folder: Path, images: torch.Tensor, like: GroupSplit) -> GroupSplit:
    """``images`` as lossless PNG files (already S×S: the resize and crop leave them as they are)."""
    folder.mkdir(parents=True)
    paths = []
    for row, image in enumerate(images):
        paths.append(folder / f"{row:03d}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    return GroupSplit(like.name, tuple(paths), like.labels, like.places, like.groups)


def _decoded(folder: Path, split: GroupSplit) -> torch.Tensor:
    return torch.cat([images for images, _ in shard_batches(folder, split, IMAGE_SIZE, 4)])


def test_shards_are_written_by_a_process_pool_and_skipped_when_current(split, tmp_path: Path):
    folder = write_shards(split, IMAGE_SIZE, tmp_path / "s", rows_per_shard=4, num_workers=2)
    files = sorted(folder.glob("*.tar"))
    assert len(files) == 3 and (folder / INDEX).is_file()
    serial = write_shards(split, IMAGE_SIZE, tmp_path / "serial", rows_per_shard=4)
    assert torch.equal(_decoded(folder, split), _decoded(serial, split))  # the pool writes what one process does
    stamps = [path.stat().st_mtime_ns for path in files]
    write_shards(split, IMAGE_SIZE, folder, rows_per_shard=4, num_workers=2)  # current: nothing rewritten
    assert [path.stat().st_mtime_ns for path in files] == stamps
    write_shards(split, 24, folder, rows_per_shard=6)  # another size: rewritten, the old files removed
    assert len(list(folder.glob("*.tar"))) == 2


def test_two_ranks_write_their_own_files_and_rank_zero_the_index(split, tmp_path: Path, monkeypatch):
    import starft_pipeline.data.shards as shards

    written: dict[int, list[str]] = {0: [], 1: []}
    original = shards._write_shard_file
    rank_of_thread: dict[int, int] = {}

    def recording(path, *args):
        written[rank_of_thread[threading.get_ident()]].append(Path(path).name)
        return original(path, *args)

    monkeypatch.setattr(shards, "_write_shard_file", recording)

    def run(rank: int) -> None:
        rank_of_thread[threading.get_ident()] = rank
        write_shards(split, IMAGE_SIZE, tmp_path / "s", rows_per_shard=3, context=DistContext(rank, 2))

    other = threading.Thread(target=run, args=(1,))
    other.start()  # rank 1 polls for rank 0's index: no collective to time out
    run(0)
    other.join(timeout=60)
    assert not other.is_alive()
    names = sorted(path.name for path in (tmp_path / "s").glob("*.tar"))
    assert written == {0: names[0::2], 1: names[1::2]}  # 4 files: each rank two, none twice
    assert _decoded(tmp_path / "s", split).shape == (N_CLASSES, 3, IMAGE_SIZE, IMAGE_SIZE)


def test_the_stage_writes_every_split_or_nothing(tmp_path: Path):
    from starft_pipeline.data.dataset_index import all_splits
    from starft_pipeline.pipelines.class_names.nodes import build_dataset_index, prepare_datasets
    from starft_pipeline.pipelines.shards.nodes import write_image_shards
    from tests.helpers import PROJECT_ROOT, tiny_parameters

    params = tiny_parameters(tmp_path / "data")
    metadata = prepare_datasets(params["datasets"])
    templates = yaml.safe_load((PROJECT_ROOT / "conf/base/templates/prompt_templates.yml").read_text())
    index = build_dataset_index(metadata, templates, params["class_names"])
    teacher = params["teacher"]
    assert write_image_shards(metadata, index, {"folder": None}, teacher) == {"folder": None, "decode": "cpu"}
    settings = {"folder": str(tmp_path / "shards"), "decode": "gpu", "num_workers": 2, "rows_per_shard": 64}
    record = write_image_shards(metadata, index, settings, teacher)
    splits = all_splits(metadata, index)
    assert record == {"folder": settings["folder"], "decode": "gpu", "image_size": IMAGE_SIZE, "splits": sorted(splits)}
    for key, split in splits.items():
        assert len(_decoded(tmp_path / "shards" / key, split)) == len(split)


def test_the_teacher_reads_the_shards_stage_folder(split, tmp_path: Path):
    from starft_pipeline.models.teacher import EncodeSettings, _features_of, split_features

    loaded = tiny_model()
    write_shards(split, IMAGE_SIZE, tmp_path / "shards" / "d" / "train", rows_per_shard=4)
    features = _features_of(
        loaded, "d/train", split, None, EncodeSettings(batch_size=4, shards=str(tmp_path / "shards"))
    )
    direct = split_features(loaded, split, 4, torch.device("cpu"))
    cosine = (features * direct).sum(dim=1)  # unit features of JPEG re-encoded vs original pixels
    assert features.shape == direct.shape and not torch.equal(features, direct) and cosine.min() > 0.98
    with pytest.raises(FileNotFoundError, match="shards stage"):
        _features_of(loaded, "d/val", split, None, EncodeSettings(batch_size=4, shards=str(tmp_path / "shards")))


def test_finetuning_from_shards_equals_finetuning_from_their_images_in_memory(tmp_path: Path):
    data = tiny_train_data(16)
    labels = data.labels.numpy()
    split = _png_split(tmp_path / "png", data.images, GroupSplit("train", (), labels, 0 * labels, 0 * labels))
    folder = write_shards(split, IMAGE_SIZE, tmp_path / "shards", rows_per_shard=5)
    config = tiny_config(method="star", epochs=2, num_workers=1, data_loading="stream")
    in_memory = train_images_from_shards(folder, split, IMAGE_SIZE, "memory")
    assert isinstance(in_memory, torch.Tensor) and torch.equal(in_memory, _decoded(folder, split))
    data.images = in_memory
    expected = finetune(tiny_model(), data, config, torch.device("cpu"))
    data.images = train_images_from_shards(folder, split, IMAGE_SIZE, "stream", num_workers=1)
    assert isinstance(data.images, StreamedImages)
    streamed = finetune(tiny_model(), data, config, torch.device("cpu"))
    losses = [row["loss"] for row in expected.history if "loss" in row]
    assert losses and losses == pytest.approx([row["loss"] for row in streamed.history if "loss" in row], abs=1e-6)
    state = streamed.model.state_dict()
    assert all(torch.allclose(value, state[key], atol=1e-6) for key, value in expected.model.state_dict().items())


def test_streamed_workers_persist_across_passes(split, tmp_path: Path):
    folder = write_shards(split, IMAGE_SIZE, tmp_path / "s", rows_per_shard=4)
    source = streamed_shards(folder, split, IMAGE_SIZE, num_workers=2)
    passes = [[torch.tensor([3, 1, 2]), torch.tensor([0, 4])], [torch.tensor([10, 9])]]
    workers = []
    for batches in passes:
        for batch, _ in zip(batches, source.steps(batches)):
            assert torch.equal(source[batch], _decoded(folder, split)[batch])
        workers.append([process.pid for process in source.loader()._iterator._workers])  # type: ignore[union-attr]
    assert source.loader().persistent_workers and workers[0] == workers[1] and len(workers[0]) == 2


def test_a_step_gets_the_loaded_batch_itself_not_a_copy(split, tmp_path: Path):
    folder = write_shards(split, IMAGE_SIZE, tmp_path / "s", rows_per_shard=4)
    source = streamed_shards(folder, split, IMAGE_SIZE)
    batch = torch.tensor([7, 2, 5, 0])
    for _ in source.steps([batch]):
        loaded = source._images
        assert loaded is not None
        whole, micro = source[batch], source[batch[2:]]  # the whole step, and an accumulation micro-batch
        assert whole.data_ptr() == loaded.data_ptr()  # the loader's (pinned, with CUDA) tensor as it is
        assert micro.untyped_storage().data_ptr() == loaded.untyped_storage().data_ptr()
        shuffled = source[batch.flip(0)]  # another order: a gather (a copy) is unavoidable
        assert torch.equal(shuffled, loaded.flip(0)) and shuffled.data_ptr() != loaded.data_ptr()


def test_batches_are_pinned_only_for_host_decode_with_cuda(monkeypatch):
    assert not pins_batches(True) or torch.cuda.is_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the decision only: no CUDA call follows
    assert pins_batches(True)
    assert not pins_batches(True, decodes_on_device=True)  # GPU decode hands over device tensors
    assert not pins_batches(False)


def test_evaluation_from_shards_predicts_as_from_the_same_pre_resized_images(split, tmp_path: Path):
    folder = write_shards(split, IMAGE_SIZE, tmp_path / "shards" / "d" / "val", rows_per_shard=4)
    pre_resized = _png_split(tmp_path / "png", _decoded(folder, split), split)
    task = EvalTask("d", tuple(f"class {k}" for k in range(N_CLASSES)), ("a photo of a {c}.",), 1, ("g",), (1,))
    loaded = tiny_model()
    entries = [ModelUnderTest("zero_shot", loaded.model, {}, ("val",))]
    settings = PassSettings(batch_size=4, num_workers=1)
    from_shards = one_pass_predictions(
        loaded, entries, [SplitToEvaluate("d", "val", split, task)], replace(settings, shards=str(tmp_path / "shards"))
    )
    from_files = one_pass_predictions(loaded, entries, [SplitToEvaluate("d", "val", pre_resized, task)], settings)
    assert np.array_equal(from_shards[("zero_shot", "d", "val")], from_files[("zero_shot", "d", "val")])
    assert len(from_shards[("zero_shot", "d", "val")]) == N_CLASSES


def test_the_shards_are_written_at_the_teacher_models_input_size():
    from starft_pipeline.pipelines.shards.nodes import model_image_size

    assert (model_image_size("ViT-B-16"), model_image_size("starft-tiny-vit")) == (224, IMAGE_SIZE)
    with pytest.raises(ValueError, match="teacher.model.architecture 'no-such-net'"):
        model_image_size("no-such-net")


def test_the_shards_record_reads_as_empty_before_the_stage_ran(tmp_path: Path):
    from starft_pipeline.kedro_io import OptionalJSONDataset

    dataset = OptionalJSONDataset(str(tmp_path / "image_shards.json"))
    assert dataset.load() == {} and not dataset.exists()  # the teacher then reads the original files
    dataset.save({"folder": "data/shards", "decode": "cpu"})
    assert dataset.load() == {"folder": "data/shards", "decode": "cpu"}


def test_the_teacher_stage_reads_the_shards_and_passes_them_on(tmp_path: Path):
    from starft_pipeline.pipelines.shards.nodes import write_image_shards
    from starft_pipeline.pipelines.teacher.nodes import build_teacher_cache
    from tests.helpers import tiny_upstream

    upstream = tiny_upstream(tmp_path / "data")
    params, metadata, index, document = (upstream[key] for key in ("params", "metadata", "index", "descriptions"))
    record = write_image_shards(metadata, index, {"folder": str(tmp_path / "shards")}, params["teacher"])
    teacher_model, _ = build_teacher_cache(metadata, index, document, params["teacher"], record)
    assert teacher_model["shards"] == {
        "folder": str(tmp_path / "shards"),
        "decode": "cpu",
    }  # finetune/evaluation read it
    without, _ = build_teacher_cache(metadata, index, document, params["teacher"], {})  # before the stage ran
    assert "shards" not in without and without["fingerprint"] == teacher_model["fingerprint"]

"""GPU check: ViT-B/16 at batch 512 in bf16: training img/s and MFU, shard loader img/s, evaluation img/s.

Run by ``benchmarks/gpu_check.sh`` (≤ 8 minutes on one GPU; each section's estimated time on one H200
is printed first, its actual time after it). Sections:

- training: FLYP and StarFT (cached teacher), eager and compiled. The model is randomly initialised
  (open_clip's ``ViT-B-16-quickgelu`` config, what conf/imagenet builds for OpenAI's weights; speed does
  not depend on the weights), images, labels and teacher
  features are random, the classes and descriptions are ImageNet's 1,000 with the background pool: the
  real ``training_step`` of the pipeline, with the recipe's defaults (precision ``auto`` = bf16 on
  CUDA, TF32).
- shards_training: FLYP (eager) trained through the pipeline's real loader from the 224 px shards
  (``shards.streamed_shards``, what fine-tuning reads with ``shards.folder``): CPU decode in 12
  persistent workers, then GPU decode; wall-clock img/s, loader included.
- star_online: StarFT with the online teacher (``teacher_mode: online``), eager and compiled.
- loader: an ImageNet-shaped tree (``imagenet_like``, 1,000 classes) is written to a temporary folder
  and its train split as 224 px shards (``shards.write_shards``, what the shards stage writes);
  img/s out of ``shards.shard_batches`` with CPU decode in 4, 8 and 12 workers, then with GPU decode
  (``decode: gpu``: nvjpeg; without CUDA it falls back on CPU workers and says so).
- evaluation: the one-pass evaluation (``evaluate.one_pass_predictions``) of zero-shot + 2 fine-tuned
  copies on 30,000 val images (the tree's, decoded from the original files by 12 workers): decoded
  images per second, each encoded by the 3 models in bf16.

MFU counts open_clip's profile of ViT-B/16: 35.1 GFLOPs for the image tower and 6.0 for the text tower
per sample forward at 77 tokens, scaled to the tokens the step really encodes (each distinct caption or
description of a batch once, trimmed to the longest: ``engine.token_lengths``; counted per run and
printed as tokens/img); training ≈ 3× forward; for the online teacher, its forward (one image and one
text per image) is counted too, since the GPU does it every step. Against ``--peak-tflops``, by default
from the GPU's name (dense bf16: H100 SXM / H200 989, H100 PCIe 756; another GPU needs the flag).

    bash benchmarks/gpu_check.sh                 # on a GPU machine
    bash benchmarks/gpu_check.sh --dry           # CPU, tiny model, batch 8, a 16-image tree: seconds

A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import atexit
import copy
import dataclasses
import functools
import itertools
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import (
    SYNTHETIC_CLASSES,
    Setting,
    method_config,
    random_train_data,
    synchronise,
)

from starft_pipeline.core.precision import resolve_precision
from starft_pipeline.data.imagenet_like import write_imagenet_like
from starft_pipeline.data.shards import resolve_decode, shard_batches, streamed_shards, write_shards
from starft_pipeline.data.splits import GroupSplit
from starft_pipeline.data.streaming import epoch_steps
from starft_pipeline.data.tasks import EvalTask
from starft_pipeline.evaluate.predictions import ModelUnderTest, PassSettings, SplitToEvaluate, one_pass_predictions
from starft_pipeline.models.clip import LoadedModel, ModelSpec, create_model, resolve_device
from starft_pipeline.train.batches import TrainData
from starft_pipeline.train.engine import Encoders, compile_towers
from starft_pipeline.train.finetune import FinetuneConfig, setup_state, training_step
from starft_pipeline.train.teacher_modes import OnlineTeacher

IMAGE_GFLOPS, TEXT_GFLOPS, TRAINING_FACTOR = 35.1, 6.0, 3.0  # ViT-B/16 per sample forward (open_clip profile)
CONTEXT_LENGTH = 77  # the text tower's profile above is for a full 77-token context
#: Dense bf16 peaks (datasheets, TFLOP/s) by GPU name: SXM H100 and H200 ≈ 989, H100 PCIe ≈ 756.
PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0))
TIME_BUDGET_S = 450.0  # the sections stop starting new work after this (gpu_check.sh kills at 480 s)
DATA_WORKERS = 12  # loader processes of the data sections (the H200 machine has 16 cores)
LOADER_WARMUP_BATCHES = 2  # not counted: the workers' start-up
EVAL_REPEATS = 10  # the evaluation section reads the 3,000 val images this many times (30,000 images)


@dataclass(frozen=True)
class Check:
    """What the check runs on."""

    device: torch.device
    setting: Setting
    steps: int
    warmup: int
    compiled_warmup: int
    peak_tflops: float
    dry: bool
    started: float

    def time_left(self) -> float:
        return TIME_BUDGET_S - (time.perf_counter() - self.started)


#: The paper's model as conf/imagenet builds it for OpenAI's weights (QuickGELU).
RECIPE_ARCHITECTURE = "ViT-B-16-quickgelu"


def peak_tflops_for(gpu_name: str) -> float | None:
    """The GPU's dense bf16 peak from its name (``torch.cuda.get_device_name``); None when not known."""
    return next((peak for name, peak in PEAK_TFLOPS if name.lower() in gpu_name.lower()), None)


class TextTokens:
    """Counts the text tokens the step's text tower really encodes: ``Encoders.encode_rows`` encodes each
    distinct row of a batch once, trimmed to the longest of them (``engine.token_lengths``), so FLYP's
    ≈ 10–20-token captions cost a fraction of a 77-token context."""

    def __init__(self) -> None:
        self.tokens = 0

    def __enter__(self) -> TextTokens:
        original = self._original = Encoders.encode_rows

        def counting(encoders: Encoders, tokens: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor):
            distinct = torch.unique(rows)
            self.tokens += len(distinct) * int(lengths[distinct].max())
            return original(encoders, tokens, lengths, rows)

        Encoders.encode_rows = counting  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        Encoders.encode_rows = self._original  # type: ignore[method-assign]


def train_flops_per_image(setting: Setting, text_tokens_per_image: float, online: bool = False) -> float:
    """Training FLOPs per image counted for MFU (ViT-B/16's profile; a tiny model is not profiled: 0):
    the image tower, and the text tower for the tokens the step encodes (``TextTokens``, per image).

    ``online``: plus the frozen teacher's forward (one image and one description text per image),
    work the GPU does each step, so MFU counts it as useful."""
    if setting.architecture != RECIPE_ARCHITECTURE:
        return 0.0
    text = TEXT_GFLOPS * text_tokens_per_image / CONTEXT_LENGTH
    teacher = IMAGE_GFLOPS + text if online else 0.0
    return (TRAINING_FACTOR * (IMAGE_GFLOPS + text) + teacher) * 1e9


@dataclass(frozen=True)
class Throughput:
    images_per_s: float
    text_tokens_per_image: float  # what the text tower encoded, per training image (trimmed, distinct rows)


def train_throughput(
    check: Check, loaded: LoadedModel, data: TrainData, config: FinetuneConfig, warmup: int
) -> Throughput:
    """Images per second of ``training_step`` over ``check.steps`` steps after ``warmup`` (synchronised)."""
    state = setup_state(loaded, config, len(data.labels), check.device)
    batch = config.batch_size
    rounds = len(data.labels) // batch
    seconds: list[float] = []
    with TextTokens() as text:
        for step in range(warmup + check.steps):
            state.step = step
            indices = torch.arange((step % rounds) * batch, (step % rounds + 1) * batch)
            synchronise(check.device)
            started = time.perf_counter()
            training_step(loaded, state, data, indices, config, config.reg_weight, check.device)
            synchronise(check.device)
            if step >= warmup:
                seconds.append(time.perf_counter() - started)
    return Throughput(batch / statistics.median(seconds), text.tokens / ((warmup + check.steps) * batch))


def report_train(check: Check, name: str, measured: Throughput, online: bool = False) -> None:
    flops = train_flops_per_image(check.setting, measured.text_tokens_per_image, online)
    rate = measured.images_per_s
    mfu = f"MFU {100 * rate * flops / (check.peak_tflops * 1e12):5.1f}%" if flops else "MFU n/a (not ViT-B/16)"
    tokens = f"text {measured.text_tokens_per_image:.1f} tokens/img"
    print(f"train  {name:<28} {rate:9.1f} img/s   {mfu}   {tokens}", flush=True)


def skipped(section: str, reason: str) -> None:
    print(f"{section:<35} skipped: {reason}", flush=True)


def training_section(check: Check) -> None:
    """FLYP and StarFT (cached teacher), eager then compiled (one compiled model serves both methods)."""
    for compiled in (False, True):
        label = "compiled" if compiled else "eager"
        if compiled and check.dry:
            skipped("train  (compiled)", "--dry (torch.compile takes minutes on the CPU)")
            continue
        loaded = create_model(ModelSpec(architecture=check.setting.architecture), device=check.device)
        data = random_train_data(loaded, check.setting, 2 * check.setting.batch_size)
        if compiled:
            compile_towers(loaded.model)
        for method in ("flyp", "star_cached"):
            if check.time_left() <= 0:
                skipped(f"train  {method} {label}", "time budget spent")
                continue
            config = method_config(method, check.setting.batch_size)
            config = dataclasses.replace(config, precision="auto", tf32=True, compile=False)
            warmup = check.compiled_warmup if compiled else check.warmup
            report_train(check, f"{method} {label}", train_throughput(check, loaded, data, config, warmup))
        del loaded, data
        if check.device.type == "cuda":
            torch.cuda.empty_cache()


def shards_training_throughput(check: Check, loaded: LoadedModel, decode: str, workers: int) -> Throughput:
    """FLYP's ``training_step`` fed by the pipeline's own streamed source from the tree's 224 px shards
    (``shards.streamed_shards``: persistent workers, pinned batches or GPU decode; ``epoch_steps`` as the
    loop calls it): images/s over ``check.steps`` steps after ``check.warmup``, wall clock, loader included."""
    tree = imagenet_tree(check.dry)
    config = dataclasses.replace(
        method_config("flyp", check.setting.batch_size), precision="auto", tf32=True, compile=False, pin_memory=True
    )
    source = streamed_shards(tree.shards, tree.train, tree.image_size, workers, True, decode, check.device)
    data = dataclasses.replace(random_train_data(loaded, check.setting, len(tree.train)), images=source)
    state = setup_state(loaded, config, len(tree.train), check.device)
    batch, total = config.batch_size, check.warmup + check.steps
    step, started = 0, time.perf_counter()
    with TextTokens() as text:
        for epoch in itertools.count():
            order = torch.randperm(len(tree.train), generator=torch.Generator().manual_seed(epoch))
            batches = [indices for indices in order.split(batch) if len(indices) == batch]
            for indices in epoch_steps(source, batches, torch.arange(batch)):
                if step == check.warmup:
                    synchronise(check.device)
                    started = time.perf_counter()
                state.step = step
                training_step(loaded, state, data, indices, config, config.reg_weight, check.device)
                step += 1
                if step == total:
                    break
            if step == total:
                break
    synchronise(check.device)
    return Throughput(check.steps * batch / (time.perf_counter() - started), text.tokens / (total * batch))


def shards_training_section(check: Check) -> None:
    """FLYP eager trained from the shards through the real loader: CPU decode in the workers, then GPU decode."""
    loaded = create_model(ModelSpec(architecture=check.setting.architecture), device=check.device)
    workers = 1 if check.dry else DATA_WORKERS
    for decode in ("cpu", "gpu"):
        if check.time_left() <= 0:
            skipped(f"train  flyp from shards {decode} decode", "time budget spent")
            continue
        measured = shards_training_throughput(check, loaded, decode, workers)
        actual = resolve_decode(decode)
        note = "" if actual == decode else f" (fell back on {actual}: no CUDA)"
        report_train(check, f"flyp from shards {decode} {workers:>2}w{note}", measured)
    del loaded
    if check.device.type == "cuda":
        torch.cuda.empty_cache()


# --- StarFT with the online teacher, the shard loader, evaluation ---------------------------------------


def star_online_section(check: Check) -> None:
    """StarFT with the online teacher (the frozen zero-shot copy encodes every batch's crops and descriptions),
    eager and compiled (the student's towers; the teacher runs eagerly, as in the pipeline)."""
    for compiled in (False, True):
        label = "compiled" if compiled else "eager"
        if compiled and check.dry:
            skipped("train  star_online compiled", "--dry (torch.compile takes minutes on the CPU)")
            continue
        if check.time_left() <= 0:
            skipped(f"train  star_online {label}", "time budget spent")
            continue
        loaded = create_model(ModelSpec(architecture=check.setting.architecture), device=check.device)
        teacher = OnlineTeacher(copy.deepcopy(loaded), check.device, resolve_precision("auto", check.device))
        data = dataclasses.replace(
            random_train_data(loaded, check.setting, 2 * check.setting.batch_size), teacher=teacher
        )
        if compiled:
            compile_towers(loaded.model)
        config = dataclasses.replace(
            method_config("star_online", check.setting.batch_size),
            precision="auto",
            tf32=True,
            compile=False,
            teacher_mode="online",
        )
        warmup = check.compiled_warmup if compiled else check.warmup
        report_train(check, f"star_online {label}", train_throughput(check, loaded, data, config, warmup), online=True)
        del loaded, teacher, data
        if check.device.type == "cuda":
            torch.cuda.empty_cache()


@dataclass(frozen=True)
class Tree:
    """The ImageNet-shaped tree the data sections read, and its train split written as shards."""

    train: GroupSplit
    val: GroupSplit
    shards: Path
    image_size: int


def _split(root: Path, name: str) -> GroupSplit:
    paths = tuple(sorted(root.glob("*/*.JPEG")))
    labels = np.array([int(path.parent.name[1:]) for path in paths], dtype=np.int64)
    zeros = np.zeros(len(paths), dtype=np.int64)
    return GroupSplit(name=name, paths=paths, labels=labels, places=zeros, groups=labels.copy())


@functools.cache
def imagenet_tree(dry: bool) -> Tree:
    """A small ImageNet-shaped tree (imagenet_like: 40–80 px JPEGs) in a temporary folder, its train split
    written once as 224 px shards (the shard loader's input, what the shards stage writes)."""
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    classes, per_class, size = (8, 2, 32) if dry else (1000, 3, 224)
    write_imagenet_like(root, train_per_class=per_class, val_per_class=per_class, n_classes=classes)
    train, val = _split(root / "train", "train"), _split(root / "val", "val")
    shards = write_shards(train, size, root / "shards", rows_per_shard=1000, num_workers=0 if dry else DATA_WORKERS)
    return Tree(train, val, shards, size)


def loader_throughput(
    tree: Tree, batch_size: int, decode: str, num_workers: int, seconds: float, device: torch.device
) -> float:
    """Images per second out of ``shards.shard_batches`` (on ``device`` for GPU decode, pinned host memory
    otherwise), the train shards read round after round in one loader for about ``seconds``; the first
    batches (worker start-up) are not counted."""
    rounds = 50  # rows repeat: one loader for every round, no worker restart between them
    rows = np.tile(np.arange(len(tree.train)), rounds)
    batches = shard_batches(
        tree.shards,
        tree.train,
        tree.image_size,
        batch_size,
        num_workers=num_workers,
        pin_memory=True,
        rows=rows,
        decode=decode,
        device=device,
    )
    counted, started = 0, None
    for number, (images, _) in enumerate(batches):
        images = images.to(device, non_blocking=True)
        if number == LOADER_WARMUP_BATCHES:
            synchronise(device)
            started = time.perf_counter()
        elif started is not None:
            counted += len(images)
            if time.perf_counter() - started >= seconds:
                break
    synchronise(device)
    if started is None or counted == 0:
        raise RuntimeError(f"the loader gave fewer than {LOADER_WARMUP_BATCHES + 2} batches; write more shards")
    return counted / (time.perf_counter() - started)


def loader_section(check: Check) -> None:
    """Loader img/s from the 224 px shards: CPU decode in several worker counts, then GPU decode (nvjpeg;
    falls back on CPU workers, with a log line, where CUDA is missing)."""
    tree = imagenet_tree(check.dry)
    seconds = 0.5 if check.dry else 8.0
    for decode, workers in [*(("cpu", n) for n in check_workers(check)), ("gpu", DATA_WORKERS if not check.dry else 1)]:
        if check.time_left() <= 0:
            skipped(f"loader {decode} decode {workers} workers", "time budget spent")
            continue
        images_per_s = loader_throughput(tree, check.setting.batch_size, decode, workers, seconds, check.device)
        actual = resolve_decode(decode)
        note = "" if actual == decode else f" (fell back on {actual}: no CUDA)"
        print(f"loader {decode} decode {workers:>2} workers {'':<7} {images_per_s:9.1f} img/s{note}", flush=True)


def check_workers(check: Check) -> tuple[int, ...]:
    return (0, 1) if check.dry else (4, 8, DATA_WORKERS)


def evaluation_section(check: Check) -> None:
    """One-pass evaluation img/s: each val image decoded once (DataLoader workers, from the original JPEGs)
    and encoded by every model (zero-shot + 2 fine-tuned copies) in bf16 on CUDA, its zero-shot head
    built once per model (1,000 classes, one template, counted in the time)."""
    tree = imagenet_tree(check.dry)
    base = create_model(ModelSpec(architecture=check.setting.architecture), device=check.device)
    entries = [
        ModelUnderTest(key, base.model if key == "zero_shot" else copy.deepcopy(base.model), splits=("val",))
        for key in ("zero_shot", "ft_1", "ft_2")
    ]
    repeats = 1 if check.dry else EVAL_REPEATS  # the val images, read this many times (one split)
    split = dataclasses.replace(
        tree.val,
        paths=tree.val.paths * repeats,
        labels=np.tile(tree.val.labels, repeats),
        places=np.tile(tree.val.places, repeats),
        groups=np.tile(tree.val.groups, repeats),
    )
    names = tuple(f"class {label}" for label in range(int(split.labels.max()) + 1))
    task = EvalTask("imagenet_like", names, ("a photo of a {}.",), 1, names, (1,) * len(names))
    settings = PassSettings(check.device, check.setting.batch_size, num_workers=0 if check.dry else DATA_WORKERS)
    synchronise(check.device)
    started = time.perf_counter()
    predictions = one_pass_predictions(base, entries, [SplitToEvaluate("imagenet_like", "val", split, task)], settings)
    synchronise(check.device)
    images_per_s = len(split) / (time.perf_counter() - started)
    assert all(len(labels) == len(split) for labels in predictions.values())
    print(
        f"evaluation {len(entries)} models, one pass {'':<7} {images_per_s:9.1f} img/s   "
        f"({len(entries) * images_per_s:.1f} model-images/s, {len(split)} images)",
        flush=True,
    )


#: Each section's estimated seconds on one H200 (printed; the total must stay under gpu_check.sh's 480 s).
SECTION_BUDGETS_S = {
    "training_section": 170,  # 2 model builds, 4 × 23 eager steps ≈ 20 s, one compile of both towers ≈ 2 min
    "shards_training_section": 40,  # one model build, 2 × 23 FLYP steps fed by the loader ≈ 2 × 5 s
    "loader_section": 60,  # tree (6,000 JPEGs) and 3,000 shard samples ≈ 15 s, 4 × 8 s of loading
    "evaluation_section": 60,  # 3 models × 30,000 images ≈ 3 × 4 s of encoding, decoding in workers
    "star_online_section": 130,  # the same as training for StarFT online (one method), its teacher forward on top
}
#: In order of importance: if compiling runs long, the budget cuts the online teacher's compiled run first.
SECTIONS = (training_section, shards_training_section, loader_section, evaluation_section, star_online_section)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny model, batch 8, 2 steps: checks the script runs")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the GPU's dense bf16 peak in TFLOP/s (default from its name: H100 SXM / H200 989, H100 PCIe 756)",
    )
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--compiled-warmup", type=int, default=8, help="warm-up steps of compiled runs (recompiles)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.dry:
        setting = Setting("tiny", "starft-tiny-vit", 8, SYNTHETIC_CLASSES, "synthetic_background")
        device, steps, warmup = torch.device("cpu"), 2, 1
        torch.set_num_threads(1)  # a tiny model: threads would only wait for each other on a shared CPU
    else:
        setting = Setting("vit-b-16", RECIPE_ARCHITECTURE, args.batch, tuple(IMAGENET_CLASSNAMES), "background")
        device, steps, warmup = resolve_device("auto"), args.steps, args.warmup
        if device.type != "cuda":
            raise SystemExit("gpu_check: no CUDA device; use --dry to check the script on the CPU")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = args.peak_tflops or peak_tflops_for(name) or (1.0 if args.dry else None)  # --dry: no MFU (tiny model)
    if peak is None:
        raise SystemExit(f"gpu_check: no known bf16 peak for {name!r}; give it with --peak-tflops (A100: 312)")
    check = Check(device, setting, steps, warmup, args.compiled_warmup, peak, args.dry, started)
    print(
        f"gpu_check: {name}, torch {torch.__version__}, {setting.architecture} batch {setting.batch_size}, "
        f"precision {resolve_precision('auto', device)}, TF32 on, {steps} timed steps, peak {peak:g} TFLOP/s",
        flush=True,
    )
    print(
        "gpu_check: budget per section on one H200 ≈ "
        + ", ".join(f"{name.removesuffix('_section')} {s} s" for name, s in SECTION_BUDGETS_S.items())
        + f" (total ≈ {sum(SECTION_BUDGETS_S.values())} s; stops starting work at {TIME_BUDGET_S:.0f} s)",
        flush=True,
    )
    for section in SECTIONS:
        section_started = time.perf_counter()
        try:
            section(check)
        except Exception as error:  # on a GPU one broken section must not hide the others' figures
            if check.dry:
                raise  # the dry run is the test that keeps this script working
            skipped(section.__name__, f"{type(error).__name__}: {error}")
        print(
            f"  ({section.__name__.removesuffix('_section')}: {time.perf_counter() - section_started:.1f} s)",
            flush=True,
        )
    print(f"gpu_check: done in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()

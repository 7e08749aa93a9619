"""GPU check: training throughput and MFU of ViT-B/16 at batch 512 in bf16, FLYP and StarFT, compiled and not.

Run by ``benchmarks/gpu_check.sh`` (≤ 8 minutes on one GPU). The model is randomly initialised
(open_clip's ``ViT-B-16`` config; speed does not depend on the weights), images, labels and
teacher features are random, the classes and descriptions are ImageNet's 1,000 with the background
pool: the real ``training_step`` of the pipeline, with the recipe's defaults (precision ``auto`` =
bf16 on CUDA, TF32). MFU counts open_clip's profile of ViT-B/16: 35.1 GFLOPs for the image tower
and 6.0 for the text tower per sample forward, training ≈ 3× forward (StarFT's description
forward is not counted), against ``--peak-tflops`` (H200 dense bf16: 790).

Sections other engineers build are slots (``*_slot`` functions below) that print
``skipped: <reason>`` until their code can be imported: StarFT with an online teacher, loader
throughput from shards (CPU workers, GPU decode) and evaluation throughput.

    bash benchmarks/gpu_check.sh                 # on a GPU machine
    bash benchmarks/gpu_check.sh --dry           # CPU, tiny model, 2 steps of batch 8: seconds

A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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

from starft_pipeline.engine import compile_towers, resolve_precision
from starft_pipeline.models import LoadedModel, ModelSpec, create_model, resolve_device
from starft_pipeline.training import (
    FinetuneConfig,
    TrainData,
    setup_state,
    training_step,
)

IMAGE_GFLOPS, TEXT_GFLOPS, TRAINING_FACTOR = 35.1, 6.0, 3.0  # ViT-B/16 per sample forward (open_clip profile)
TIME_BUDGET_S = 450.0  # the sections stop starting new work after this (gpu_check.sh kills at 480 s)


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


def train_flops_per_image(setting: Setting) -> float:
    """Training FLOPs per image counted for MFU (ViT-B/16's profile; a tiny model is not profiled: 0)."""
    if setting.architecture != "ViT-B-16":
        return 0.0
    return TRAINING_FACTOR * (IMAGE_GFLOPS + TEXT_GFLOPS) * 1e9


def train_throughput(check: Check, loaded: LoadedModel, data: TrainData, config: FinetuneConfig, warmup: int) -> float:
    """Images per second of ``training_step`` over ``check.steps`` steps after ``warmup`` (synchronised)."""
    state = setup_state(loaded, config, len(data.labels), check.device)
    batch = config.batch_size
    rounds = len(data.labels) // batch
    seconds: list[float] = []
    for step in range(warmup + check.steps):
        state.step = step
        indices = torch.arange((step % rounds) * batch, (step % rounds + 1) * batch)
        synchronise(check.device)
        started = time.perf_counter()
        training_step(loaded, state, data, indices, config, config.reg_weight, check.device)
        synchronise(check.device)
        if step >= warmup:
            seconds.append(time.perf_counter() - started)
    return batch / statistics.median(seconds)


def report_train(check: Check, name: str, images_per_s: float) -> None:
    flops = train_flops_per_image(check.setting)
    mfu = f"MFU {100 * images_per_s * flops / (check.peak_tflops * 1e12):5.1f}%" if flops else "MFU n/a (not ViT-B/16)"
    print(f"train  {name:<28} {images_per_s:9.1f} img/s   {mfu}", flush=True)


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


# --- slots: other engineers' work; each prints "skipped: <reason>" until it can run ----------------------


def star_online_slot(check: Check) -> None:
    """SLOT: StarFT with the online teacher (a frozen copy run on every batch), eager and compiled.

    Runs once ``FinetuneConfig`` has a ``teacher_mode`` field accepting ``"online"``."""
    if "teacher_mode" not in {field.name for field in dataclasses.fields(FinetuneConfig)}:
        skipped("train  star_online", "FinetuneConfig has no teacher_mode (the online teacher is not merged)")
        return
    loaded = create_model(ModelSpec(architecture=check.setting.architecture), device=check.device)
    data = random_train_data(loaded, check.setting, 2 * check.setting.batch_size)
    config = dataclasses.replace(method_config("star_online", check.setting.batch_size), teacher_mode="online")
    report_train(check, "star_online eager", train_throughput(check, loaded, data, config, check.warmup))


def _slot_function(module: str, name: str) -> Callable | str:
    """``module.name`` if it can be imported, else why not."""
    try:
        function = getattr(importlib.import_module(module), name, None)
    except ImportError as error:
        return f"{module} cannot be imported ({error})"
    return function if callable(function) else f"{module} has no {name}()"


def loader_slot(check: Check) -> None:
    """SLOT: loader img/s from WebDataset shards, with CPU workers and with GPU decode.

    Runs ``starft_pipeline.shards.loader_throughput(device, batch_size, decode, seconds) -> float``
    (img/s) for ``decode`` in ``cpu`` and ``gpu`` once it exists."""
    function = _slot_function("starft_pipeline.shards", "loader_throughput")
    for decode in ("cpu", "gpu"):
        if isinstance(function, str):
            skipped(f"loader {decode} decode", function)
        else:
            images_per_s = function(check.device, check.setting.batch_size, decode, 5.0 if check.dry else 30.0)
            print(f"loader {decode} decode {'':<18} {images_per_s:9.1f} img/s", flush=True)


def evaluation_slot(check: Check) -> None:
    """SLOT: evaluation img/s (one pass per data set, every model encoding each decoded image).

    Runs ``starft_pipeline.evaluate.evaluation_throughput(device, batch_size, seconds) -> float``
    (img/s) once it exists."""
    function = _slot_function("starft_pipeline.evaluate", "evaluation_throughput")
    if isinstance(function, str):
        skipped("evaluation", function)
        return
    images_per_s = function(check.device, check.setting.batch_size, 5.0 if check.dry else 30.0)
    print(f"evaluation {'':<24} {images_per_s:9.1f} img/s", flush=True)


SECTIONS = (training_section, star_online_slot, loader_slot, evaluation_slot)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny model, batch 8, 2 steps: checks the script runs")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="the GPU's dense bf16 peak (H200: 790)")
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
        setting = Setting("vit-b-16", "ViT-B-16", args.batch, tuple(IMAGENET_CLASSNAMES), "background")
        device, steps, warmup = resolve_device("auto"), args.steps, args.warmup
        if device.type != "cuda":
            raise SystemExit("gpu_check: no CUDA device; use --dry to check the script on the CPU")
    check = Check(device, setting, steps, warmup, args.compiled_warmup, args.peak_tflops, args.dry, started)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check: {name}, torch {torch.__version__}, {setting.architecture} batch {setting.batch_size}, "
          f"precision {resolve_precision('auto', device)}, TF32 on, {steps} timed steps, peak {args.peak_tflops:g} TFLOP/s",
          flush=True)
    for section in SECTIONS:
        try:
            section(check)
        except Exception as error:  # on a GPU one broken section must not hide the others' figures
            if check.dry:
                raise  # the dry run is the test that keeps this script working
            skipped(section.__name__, f"{type(error).__name__}: {error}")
    print(f"gpu_check: done in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()

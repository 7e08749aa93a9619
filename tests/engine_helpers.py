"""Tiny fine-tuning inputs for the engine tests: a random-init tiny model and random train data.

Also run as a script by the resume-after-kill and DDP tests (see ``main``): it fine-tunes in a
subprocess and writes the final weights.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import pytest
import torch
import torch.nn.functional as F

from starft_pipeline.data.descriptions import DescriptionPool
from starft_pipeline.models.clip import LoadedModel, ModelSpec, create_model
from starft_pipeline.models.heads import ClassifierHead
from starft_pipeline.train.batches import TrainData
from starft_pipeline.train.finetune import FinetuneConfig

CLASS_NAMES = ("circle", "square", "triangle")
BACKGROUNDS = ("grass", "water", "sand", "snow")
TINY_ARCHITECTURE = "starft-tiny-vit"


@functools.cache
def _tiny_model(init_seed: int) -> LoadedModel:
    return create_model(ModelSpec(architecture=TINY_ARCHITECTURE, init_seed=init_seed))


def tiny_model(init_seed: int = 0) -> LoadedModel:
    """A fresh copy of the random-init tiny model (built once per process: the tokenizer takes a second)."""
    cached = _tiny_model(init_seed)
    return dataclasses.replace(cached, model=copy.deepcopy(cached.model))


@pytest.fixture(autouse=True)
def single_thread():
    """One intra-op thread: the CPU is shared, and runs compared bitwise must use the same count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_pool() -> DescriptionPool:
    entries = [
        (f"a photo of a {name} on {place}.", label) for label, name in enumerate(CLASS_NAMES) for place in BACKGROUNDS
    ]
    texts, labels = zip(*entries)
    return DescriptionPool(texts=texts, labels=labels, kinds=("synthetic_background",) * len(texts))


def tiny_train_data(n_images: int = 32, image_size: int = 32, dim: int = 128, seed: int = 0) -> TrainData:
    """Random uint8 images, labels cycling over three classes, random unit teacher features."""
    generator = torch.Generator().manual_seed(seed)
    pool = tiny_pool()
    return TrainData(
        images=torch.randint(0, 256, (n_images, 3, image_size, image_size), generator=generator, dtype=torch.uint8),
        labels=torch.arange(n_images) % len(CLASS_NAMES),
        class_names=CLASS_NAMES,
        teacher_image=F.normalize(torch.randn(n_images, dim, generator=generator), dim=-1),
        descriptions=pool,
        teacher_descriptions=F.normalize(torch.randn(len(pool.texts), dim, generator=generator), dim=-1),
        teacher_scale=50.0,
    )


def tiny_config(**overrides) -> FinetuneConfig:
    values = dict(
        method="star",
        epochs=2,
        batch_size=8,
        lr=1e-3,
        warmup_steps=1,
        reg_weight=0.5,
        diminishing=False,
        confounder_types=("synthetic_background",),
        progress=False,
    )
    return FinetuneConfig(**(values | overrides))


def tiny_head(dim: int = 128) -> ClassifierHead:
    generator = torch.Generator().manual_seed(1)
    weight = 10.0 * F.normalize(torch.randn(len(CLASS_NAMES), dim, generator=generator), dim=-1)
    return ClassifierHead(weight, torch.zeros(len(CLASS_NAMES)), CLASS_NAMES)


def train_tiny(
    n_images: int = 16, context=None, checkpoints=None, on_epoch_end=None, sgd_lr: float | None = None, **overrides
):
    """Fine-tune the tiny model on tiny data with ``tiny_config(**overrides)``; returns the TrainState.

    ``sgd_lr`` swaps AdamW for plain SGD at a constant rate: updated weights then compare cleanly
    (Adam's first steps are ±lr wherever the true gradient is zero, e.g. attention key biases,
    which turns float noise into lr-sized differences).
    """
    from starft_pipeline.core.distributed import SINGLE_PROCESS
    from starft_pipeline.models.heads import prepare_head_training
    from starft_pipeline.train.finetune import finetune, setup_state

    config = tiny_config(**overrides)
    loaded = tiny_model()
    if config.head_init is not None:
        prepare_head_training(loaded.model, tiny_head())
    data, device = tiny_train_data(n_images), torch.device("cpu")
    state = setup_state(loaded, config, n_images, device, context or SINGLE_PROCESS)
    if sgd_lr is not None:
        state.optimizer = torch.optim.SGD([p for p in state.model.parameters() if p.requires_grad], lr=sgd_lr)
        state.scheduler = torch.optim.lr_scheduler.LambdaLR(state.optimizer, lambda step: 1.0)
    return finetune(loaded, data, config, device, on_epoch_end, state, checkpoints=checkpoints, context=context)


def last_gradients(state) -> dict[str, torch.Tensor]:
    """The gradients of the last step (the loop zeroes them only at the start of the next)."""
    return {name: p.grad.detach().clone() for name, p in state.model.named_parameters() if p.grad is not None}


def ddp_worker(rank: int, world_size: int, port: int, out_dir: str, runs: dict[str, dict]) -> None:
    """One rank of a gloo job started as torchrun would (env://); rank 0 saves each run's weights and losses."""
    import os

    import torch.distributed as dist

    from starft_pipeline.core.distributed import init_from_env

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    context, _ = init_from_env(torch.device("cpu"))
    try:
        for name, overrides in runs.items():
            state = train_tiny(context=context, **overrides)
            if context.is_main:
                result = {
                    "weights": state.model.state_dict(),
                    "gradients": last_gradients(state),
                    "losses": [h["loss"] for h in state.history],
                }
                torch.save(result, f"{out_dir}/{name}.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    """``python engine_helpers.py CHECKPOINT_DIR OUT_FILE [PAUSE_AFTER_EPOCH]``: a 3-epoch tiny run with
    checkpoints; with a pause epoch it prints PAUSED after that epoch's checkpoint and sleeps (to be killed)."""
    import logging
    import sys
    import time

    from starft_pipeline.models.clip import save_weights
    from starft_pipeline.train.checkpointing import Checkpointer

    checkpoint_dir, out_file = sys.argv[1], sys.argv[2]
    pause_after = int(sys.argv[3]) if len(sys.argv) > 3 else None

    def pause(state) -> None:
        if state.epoch == pause_after:
            print("PAUSED", flush=True)
            time.sleep(300)

    logging.basicConfig(level=logging.INFO)
    torch.set_num_threads(1)
    # test_checkpointing.RESUME_RUN is this run
    state = train_tiny(n_images=32, epochs=3, checkpoints=Checkpointer(checkpoint_dir), on_epoch_end=pause)
    save_weights(state.model, out_file)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()

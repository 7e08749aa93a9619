"""Time per training step: FLYP, StarFT with the cached teacher, StarFT with an online teacher.

The online teacher is the official code's design: a frozen deep copy of the model run forward on
the batch's images and descriptions every step. Ours reads the teacher cache instead. Models are
randomly initialised (speed does not depend on the weights); images, teacher features and labels
are random. The three methods share one model and take turns, step by step, so that a load drift on
a shared machine hits them alike; warm-up rounds are excluded and the median of ``--steps`` is shown.

Two clocks: wall time (synchronised on CUDA) and this process's CPU time. On a CPU that other jobs
share, wall time measures the scheduler as much as the step; CPU time (best with ``--threads 1``,
where no thread spins waiting for another) measures the work. Ratios use CPU time on the CPU and wall
time on CUDA (``--clock`` overrides).

    python benchmarks/bench_train_step.py --device cpu --steps 5 --threads 1
    python benchmarks/bench_train_step.py --device cuda --steps 20 --models vit-b-16 --batch vit-b-16=256

Host-side time per step (``--host-only``, also the first section of every run): the real
``training_step`` at batch 512 with the 1,000 ImageNet classes, ViT-B/16's tokenizer and the
background description pool, on a stub open_clip CLIP whose towers are trivially cheap (one
patch per image, width 8, one layer). From the step's CPU time the stub's own forward, backward
and AdamW step (timed alone on the same shapes) are subtracted: what remains is what the host does
around the model: caption and description draws, tokenising, crops, index gathers and the syncs.
The images are 8 px by default (``--host-px``): the pixel arithmetic of crops and normalisation,
which runs on the device on a GPU, is then negligible on the CPU, while per-image host work is not.

    python benchmarks/bench_train_step.py --host-only --threads 1

A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

from starft_pipeline.data.descriptions import DescriptionPool, expand_pools
from starft_pipeline.data.splits import normalise_images
from starft_pipeline.models.clip import LoadedModel, ModelSpec, create_model, encode_texts, resolve_device
from starft_pipeline.train.batches import TrainData, sample_descriptions
from starft_pipeline.train.engine import peak_memory_mb, reset_peak_memory
from starft_pipeline.train.finetune import FinetuneConfig, TrainState, setup_state, training_step

TEMPLATES = Path(__file__).resolve().parents[1] / "conf" / "base" / "templates" / "spurious_templates.yml"
SYNTHETIC_CLASSES = ("circle", "square", "triangle", "cross")  # the default pipeline's data set


@dataclass(frozen=True)
class Setting:
    """A model and the data it is fine-tuned on in the benchmark."""

    name: str
    architecture: str
    batch_size: int
    class_names: tuple[str, ...]
    pool: str  # confounder type of conf/base/templates/spurious_templates.yml


SETTINGS = {
    "tiny": Setting("tiny", "starft-tiny-vit", 128, SYNTHETIC_CLASSES, "synthetic_background"),
    "vit-b-16": Setting("vit-b-16", "ViT-B-16", 32, tuple(IMAGENET_CLASSNAMES), "background"),
}
METHODS = ("flyp", "star_cached", "star_online")


def description_pool(setting: Setting) -> DescriptionPool:
    pools = yaml.safe_load(TEMPLATES.read_text())
    table = expand_pools(setting.class_names, pools, [setting.pool])[setting.pool]
    entries = [(text, label) for label, name in enumerate(setting.class_names) for text in table[name]]
    texts, labels = zip(*entries)
    return DescriptionPool(texts=texts, labels=labels, kinds=(setting.pool,) * len(texts))


def random_train_data(loaded: LoadedModel, setting: Setting, n_images: int, seed: int = 0) -> TrainData:
    generator = torch.Generator().manual_seed(seed)
    pool = description_pool(setting)
    dim = loaded.model.text_projection.shape[-1]
    size = loaded.image_size
    return TrainData(
        images=torch.randint(0, 256, (n_images, 3, size, size), generator=generator, dtype=torch.uint8),
        labels=torch.randint(len(setting.class_names), (n_images,), generator=generator),
        class_names=setting.class_names,
        teacher_image=F.normalize(torch.randn(n_images, dim, generator=generator), dim=-1),
        descriptions=pool,
        teacher_descriptions=F.normalize(torch.randn(len(pool.texts), dim, generator=generator), dim=-1),
        teacher_scale=100.0,
    )


def method_config(method: str, batch_size: int) -> FinetuneConfig:
    regularised = method.startswith("star")
    return FinetuneConfig(
        method="star" if regularised else "flyp",
        epochs=1,
        batch_size=batch_size,
        lr=1e-5,
        reg_weight=0.5 if regularised else 0.0,
        diminishing=False,
        progress=False,
    )


@torch.no_grad()
def online_teacher_forward(
    teacher: torch.nn.Module,
    loaded: LoadedModel,
    data: TrainData,
    indices: torch.Tensor,
    device: torch.device,
    step: int,
) -> None:
    """The official design: the frozen copy encodes the batch's images and its descriptions, every step.

    The features overwrite the cache rows the step then reads, so the regulariser uses them.
    """
    pixels = normalise_images(data.images[indices].to(device), loaded.image_mean, loaded.image_std)
    data.teacher_image[indices] = F.normalize(teacher.encode_image(pixels), dim=-1).float().cpu()
    by_class = data.descriptions.indices_by_class(len(data.class_names))
    picks = torch.unique(sample_descriptions(data.labels[indices], by_class, torch.Generator().manual_seed(step)))
    texts = [data.descriptions.texts[int(i)] for i in picks]
    data.teacher_descriptions[picks] = encode_texts(teacher, loaded.tokenizer, texts, device=device).cpu()


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = ("wall", "cpu")


def timed(function: Callable[[], None], device: torch.device) -> dict[str, float]:
    """Wall and process CPU seconds of ``function``."""
    synchronise(device)
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    synchronise(device)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


Times = dict[str, dict[str, list[float]]]  # method -> clock -> seconds per step


def bench_setting(setting: Setting, device: torch.device, steps: int, warmup: int) -> Times:
    """Seconds per step of each method on both clocks, rounds interleaved (warm-up rounds dropped)."""
    rounds = warmup + steps
    loaded = create_model(ModelSpec(architecture=setting.architecture), device=device)
    data = random_train_data(loaded, setting, setting.batch_size * rounds)
    configs = {method: method_config(method, setting.batch_size) for method in METHODS}
    state: TrainState = setup_state(loaded, configs["flyp"], len(data.labels), device)
    teacher = copy.deepcopy(loaded.model).eval().requires_grad_(False)
    times: Times = {method: {clock: [] for clock in CLOCKS} for method in METHODS}
    for step in range(rounds):
        indices = torch.arange(step * setting.batch_size, (step + 1) * setting.batch_size)
        state.step = step  # the step's draws (crops, captions, descriptions) follow it
        for method in METHODS:

            def one_step(method: str = method, indices: torch.Tensor = indices, step: int = step) -> None:
                if method == "star_online":
                    online_teacher_forward(teacher, loaded, data, indices, device, step)
                training_step(loaded, state, data, indices, configs[method], configs[method].reg_weight, device)

            seconds = timed(one_step, device)
            if step >= warmup:
                for clock in CLOCKS:
                    times[method][clock].append(seconds[clock])
        print(f"  {setting.name}: round {step + 1}/{rounds}" + (" (warm-up)" if step < warmup else ""), flush=True)
    return times


def table(rows: Sequence[tuple[Setting, Times, float]], device: torch.device, clock: str) -> str:
    header = (
        f"{'model':<16} {'batch':>5} {'px':>4}  {'method':<12} {'wall s (median)':>15} {'min':>8} {'max':>8} "
        f"{'cpu s (median)':>14} {'min':>8} {'max':>8} {'images/s':>9}"
    )
    lines = [header, "-" * len(header)]
    for setting, times, _ in rows:
        size = 32 if setting.name == "tiny" else 224
        for method in METHODS:
            wall, cpu = times[method]["wall"], times[method]["cpu"]
            lines.append(
                f"{setting.architecture:<16} {setting.batch_size:>5} {size:>4}  {method:<12} "
                f"{statistics.median(wall):>15.3f} {min(wall):>8.3f} {max(wall):>8.3f} "
                f"{statistics.median(cpu):>14.3f} {min(cpu):>8.3f} {max(cpu):>8.3f} "
                f"{setting.batch_size / statistics.median(times[method][clock]):>9.1f}"
            )
    lines.append(f"(images/s and the ratios below use the {clock} clock)")
    for setting, times, peak in rows:
        median = {method: statistics.median(times[method][clock]) for method in METHODS}
        cached, online = median["star_cached"] / median["flyp"], median["star_online"] / median["star_cached"]
        lines.append(
            f"{setting.architecture}: StarFT(cached)/FLYP = {cached:.3f} (target <= 1.10, "
            f"{'met' if cached <= 1.10 else 'NOT met'}); StarFT(online)/StarFT(cached) = {online:.3f} "
            f"(target >= 1.3, {'met' if online >= 1.3 else 'NOT met'}); peak memory {peak:.0f} MB"
            + (" (process RSS)" if device.type == "cpu" else " (CUDA)")
        )
    return "\n".join(lines)


HOST_BATCH, HOST_TARGET_MS = 512, 10.0
STUB_CONFIG = {  # an open_clip CLIP whose towers cost next to nothing at batch 512
    "embed_dim": 8,
    "vision_cfg": {"image_size": 8, "layers": 1, "width": 8, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 1, "layers": 1},
}


def stub_model(image_size: int) -> LoadedModel:
    """ViT-B/16's tokenizer and preprocessing on a CLIP with one patch per image, width 8, one layer."""
    import open_clip

    config = copy.deepcopy(STUB_CONFIG)
    config["vision_cfg"] |= {"image_size": image_size, "patch_size": image_size}  # one patch per image
    torch.manual_seed(0)
    model = open_clip.CLIP(**config)
    return LoadedModel(
        model,
        open_clip.get_tokenizer("ViT-B-16"),
        image_size,
        open_clip.OPENAI_DATASET_MEAN,
        open_clip.OPENAI_DATASET_STD,
    )


def model_only_step(
    loaded: LoadedModel, config: FinetuneConfig, texts: Sequence[str], batch_size: int
) -> Callable[[], None]:
    """The stub's forward (images and the distinct texts, trimmed), loss, backward and AdamW step, nothing else."""
    from starft_pipeline.train.engine import encode_text_trimmed
    from starft_pipeline.train.finetune import build_optimizer
    from starft_pipeline.train.losses import clip_contrastive_loss

    model, size = loaded.model, loaded.image_size
    pixels = torch.randn(batch_size, 3, size, size)
    tokens = torch.unique(loaded.tokenizer(list(texts)), dim=0)
    optimizer = build_optimizer(model, config)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        image = F.normalize(model.encode_image(pixels), dim=-1)
        text = F.normalize(encode_text_trimmed(model, tokens), dim=-1)
        loss = clip_contrastive_loss(image, text[torch.arange(batch_size) % len(text)], model.logit_scale.exp())
        loss.backward()
        optimizer.step()

    return step


def bench_host(steps: int, warmup: int, image_size: int, batch_size: int = HOST_BATCH) -> dict[str, dict[str, float]]:
    """Median CPU seconds per step of ``training_step`` on the stub model, of the stub's own part alone,
    and their difference (the host side), per method (FLYP, StarFT cached)."""
    setting = Setting("host", "stub", batch_size, tuple(IMAGENET_CLASSNAMES), "background")
    device = torch.device("cpu")
    loaded = stub_model(image_size)
    data = random_train_data(loaded, setting, batch_size * 4)
    medians = {}
    for method in ("flyp", "star_cached"):
        config = method_config(method, batch_size)
        state = setup_state(loaded, config, len(data.labels), device)
        seconds: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
        for step in range(warmup + steps):
            state.step = step
            indices = torch.arange((step % 4) * batch_size, (step % 4 + 1) * batch_size)

            def one_step(state=state, indices=indices, config=config) -> None:
                training_step(loaded, state, data, indices, config, config.reg_weight, device)

            figures = timed(one_step, device)
            if step >= warmup:
                for clock in CLOCKS:
                    seconds[clock].append(figures[clock])
        generator = torch.Generator().manual_seed(0)
        labels = data.labels[:batch_size]
        texts = [f"a photo of a {setting.class_names[int(y)]}." for y in labels]
        if config.regularised:
            picks = sample_descriptions(labels, data.descriptions.indices_by_class(len(setting.class_names)), generator)
            texts += [data.descriptions.texts[int(i)] for i in picks]
        model_step = model_only_step(loaded, config, texts, batch_size)
        model = [timed(model_step, device)["cpu"] for _ in range(warmup + steps)][warmup:]
        step, alone = statistics.median(seconds["cpu"]), statistics.median(model)
        medians[method] = {"step": step, "model": alone, "host": step - alone}
    return medians


def host_report(medians: dict[str, dict[str, float]], image_size: int, batch_size: int = HOST_BATCH) -> str:
    title = (
        f"host-side time per step (stub towers, batch {batch_size}, {len(IMAGENET_CLASSNAMES)} classes, "
        f"{image_size} px, background pool):"
    )
    lines = [title]
    for method, parts in medians.items():
        ms = {part: 1e3 * value for part, value in parts.items()}
        lines.append(
            f"  {method:<12} step {ms['step']:7.1f} ms - stub model alone {ms['model']:6.1f} ms = host-side "
            f"{ms['host']:7.1f} ms   host / target {ms['host'] / HOST_TARGET_MS:5.2f} (target <= "
            f"{HOST_TARGET_MS:.0f} ms, {'met' if ms['host'] <= HOST_TARGET_MS else 'NOT met'})  [CPU time]"
        )
    return "\n".join(lines)


def parse_batches(values: Sequence[str]) -> dict[str, int]:
    batches = {}
    for value in values:
        name, _, size = value.partition("=")
        if name not in SETTINGS or not size.isdigit():
            raise SystemExit(f"--batch takes MODEL=SIZE with MODEL in {sorted(SETTINGS)}; got {value!r}")
        batches[name] = int(size)
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds")
    parser.add_argument("--models", default="tiny,vit-b-16", help=f"comma-separated, from {sorted(SETTINGS)}")
    parser.add_argument("--batch", action="append", default=[], metavar="MODEL=SIZE", help="override a batch size")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument("--clock", choices=CLOCKS, default=None, help="clock of the ratios (default: cpu on CPU)")
    parser.add_argument("--host-only", action="store_true", help="only the host-side time per step (stub model)")
    parser.add_argument("--host-px", type=int, default=8, help="image size of the host-side section (default 8)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batches = parse_batches(args.batch)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown --models {unknown}; choose from {sorted(SETTINGS)}")
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{args.steps} timed steps after {args.warmup} warm-up round(s)",
        flush=True,
    )
    host = bench_host(args.steps, max(1, args.warmup), args.host_px)
    print(host_report(host, args.host_px), flush=True)
    if args.host_only:
        return
    rows = []
    for name in names:
        setting = SETTINGS[name]
        if name in batches:
            setting = Setting(setting.name, setting.architecture, batches[name], setting.class_names, setting.pool)
        reset_peak_memory(device)
        times = bench_setting(setting, device, args.steps, args.warmup)
        rows.append((setting, times, peak_memory_mb(device)))
    print()
    print(table(rows, device, args.clock or ("cpu" if device.type == "cpu" else "wall")))


if __name__ == "__main__":
    main()

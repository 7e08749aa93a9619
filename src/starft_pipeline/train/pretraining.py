"""Contrastive pretraining of the default open_clip model on the synthetic world (docs/miniature-world.md).

The model learns both concepts of the miniature world, objects *and* backgrounds, from a corpus
balanced over every object × background pair: our stand-in for CLIP's web-scale robustness, which
fine-tuning on a biased split can then erode. The result is judged zero-shot on a held-out balanced
set, once with the objects as classes and once with the backgrounds as classes.

Plain torch, no Kedro. Setup, step and loop are short separate functions; every random draw
(initialisation, corpus, batch order, captions, crops) comes from ``config.seed`` or
``config.init_seed``, so a run is repeatable on the same machine and thread count.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from starft_pipeline.core.configs import (
    bounded,
    check_crop_ratio,
    check_crop_scale,
    check_device,
    check_fields,
    config_from_params,
)
from starft_pipeline.data import synthetic
from starft_pipeline.data.splits import normalise_images
from starft_pipeline.models.clip import (
    LoadedModel,
    ModelSpec,
    create_model,
    encode_images,
    load_state_dict,
    logit_scale,
    resolve_device,
    zero_shot_head,
)
from starft_pipeline.train.batches import batch_pixels, seeded_generator
from starft_pipeline.train.losses import clip_contrastive_loss, multi_positive_contrastive_loss
from starft_pipeline.train.optim import MAX_LOGIT_SCALE, adamw, optimizer_step, warmup_cosine

logger = logging.getLogger(__name__)


def _class_slot(templates: Sequence[str], placeholder: str) -> tuple[str, ...]:
    """The synthetic caption templates with their ``{object}``/``{background}`` slot as ``{c}``."""
    return tuple(template.replace(placeholder, "{c}") for template in templates)


# The zero-shot prompts: the single-concept caption phrasings of the world, averaged per class.
OBJECT_PROMPTS: tuple[str, ...] = _class_slot(synthetic.OBJECT_CAPTION_TEMPLATES, "{object}")
BACKGROUND_PROMPTS: tuple[str, ...] = _class_slot(synthetic.BACKGROUND_CAPTION_TEMPLATES, "{background}")
COLOUR_PROMPTS: tuple[str, ...] = _class_slot(synthetic.COLOUR_CAPTION_TEMPLATES, "{colour}")
CONCEPTS: dict[str, tuple[str, ...]] = {"objects": synthetic.OBJECTS, "backgrounds": synthetic.BACKGROUNDS}
# Judged too when the captions name colours: the colour alone, and colour + shape as one class
# ("magenta circle", the miniature's compound classes; shape-major like synthetic.miniature_spec).
COLOUR_CONCEPTS: dict[str, tuple[str, ...]] = {
    "colours": synthetic.COLOURS,
    "coloured_objects": tuple(f"{colour} {obj}" for obj in synthetic.OBJECTS for colour in synthetic.COLOURS),
}
N_PAIRS = len(synthetic.OBJECTS) * len(synthetic.BACKGROUNDS)


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that decides a pretraining run's weights and its zero-shot report.

    Two choices matter in this world (measured, see docs/results.md):

    * ``batch_size`` is a multiple of the 36 object × background pairs and every batch is balanced;
      with 36, no two-concept caption of a batch also describes another image of the batch.
    * ``object_only_steps``: a caption curriculum. Whichever concept the model learns first, its
      features become invariant to the other, which then stays near chance for thousands of steps
      (contrastive "feature suppression"). Named together from the start, the backgrounds (colour
      and texture, learnt in a few dozen steps) win and the shapes stay at chance; a 3:1 mix of
      object-only and background-only captions does the same. So the captions first name the
      object only; then all kinds of captions (``single_concept_prob``) follow with a warm restart
      of the learning rate (warm-up and cosine again), which the backgrounds need: at the tail of a
      single cosine they stay near chance.

    A model that already knows the world is taught more with ``init_weights`` (warm start from a
    weights file) and ``object_only_steps: 0``: one warm-up and one cosine decay to zero at the last
    step, so the run ends converged. ``colour_prob > 0`` adds colour words to the captions (the
    object named with its colour, and colour-only captions) and colours to the zero-shot report.
    """

    architecture: str = "starft-tiny-vit"
    init_weights: str | None = None
    init_seed: int = 0
    seed: int = 0
    image_size: int = bounded(32, ge=1)
    corpus_size: int = bounded(36_000, ge=1)
    single_concept_prob: float = bounded(0.3, ge=0, le=1)
    colour_prob: float = bounded(0.0, ge=0, le=1)
    colour_only_steps: int = bounded(0, ge=0)
    multi_positive: bool = False
    steps: int = bounded(4000, ge=1)
    batch_size: int = bounded(36, ge=1)
    lr: float = bounded(1e-3, ge=0)
    weight_decay: float = bounded(0.1, ge=0)
    warmup_steps: int = bounded(200, ge=0)
    init_logit_scale: float | None = bounded(None, ge=1, le=MAX_LOGIT_SCALE)
    object_only_steps: int = bounded(3000, ge=0)
    augment: bool = True
    crop_scale: tuple[float, float] = bounded((0.9, 1.0), check=check_crop_scale)
    crop_ratio: tuple[float, float] = bounded((1.0, 1.0), check=check_crop_ratio)  # width / height; square
    eval_per_pair: int = bounded(20, ge=1)
    eval_seed: int = 1_000_003
    eval_every: int = bounded(500, ge=0)
    object_prompts: tuple[str, ...] = OBJECT_PROMPTS
    background_prompts: tuple[str, ...] = BACKGROUND_PROMPTS
    colour_prompts: tuple[str, ...] = COLOUR_PROMPTS
    device: str = bounded("cpu", check=check_device)
    num_threads: int | None = bounded(2, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "pretrain.")
        if self.batch_size % N_PAIRS or self.batch_size > self.corpus_size:
            raise ValueError(
                f"pretrain.batch_size must be a multiple of the {N_PAIRS} object × background pairs "
                f"(batches are balanced) and at most corpus_size={self.corpus_size}, got {self.batch_size}"
            )
        if self.corpus_size % N_PAIRS:
            raise ValueError(
                f"pretrain.corpus_size must be a multiple of {N_PAIRS} (a balanced corpus), got {self.corpus_size}"
            )
        if self.object_only_steps >= self.steps:
            raise ValueError(
                f"pretrain.object_only_steps ({self.object_only_steps}) must be less than pretrain.steps "
                f"({self.steps}): the backgrounds are learnt after the object-only captions"
            )
        if self.object_only_steps + self.colour_only_steps >= self.steps:
            raise ValueError(
                f"pretrain.colour_only_steps ({self.colour_only_steps}) + object_only_steps ({self.object_only_steps}) "
                f"must be less than pretrain.steps ({self.steps}): every kind of caption follows them"
            )
        if not self.object_prompts or not self.background_prompts or not self.colour_prompts:
            raise ValueError(
                "pretrain.object_prompts, pretrain.background_prompts and pretrain.colour_prompts need at least one template"
            )
        if self.init_weights is not None and not Path(self.init_weights).is_file():
            raise ValueError(
                f"pretrain.init_weights: {self.init_weights} is not a file; give a weights file to warm-start "
                "from (e.g. src/starft_pipeline/assets/weights/starft-tiny-vit-world.safetensors) or null"
            )

    @property
    def concepts(self) -> dict[str, tuple[str, ...]]:
        """The concepts the zero-shot report judges, each with its class names."""
        return CONCEPTS | (COLOUR_CONCEPTS if self.colour_prob > 0 else {})

    def prompts(self, concept: str) -> tuple[str, ...]:
        """Zero-shot templates of ``concept`` (a compound class reads like an object: "a magenta circle.")."""
        if concept == "backgrounds":
            return self.background_prompts
        return self.colour_prompts if concept == "colours" else self.object_prompts

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> PretrainConfig:
        """Build from the ``pretrain`` parameters block; an unknown key is an error that names it."""
        return config_from_params(cls, params, "pretrain")


@dataclass
class Corpus:
    """Rendered images as a uint8 tensor (N, 3, S, S) with their object, background and colour ids."""

    images: torch.Tensor
    object_ids: np.ndarray
    background_ids: np.ndarray
    colour_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @cached_property
    def pair_members(self) -> list[np.ndarray]:
        """Indices of the images of each object × background pair, pair id = object · 6 + background."""
        pairs = self.object_ids * len(synthetic.BACKGROUNDS) + self.background_ids
        return [np.flatnonzero(pairs == pair) for pair in range(N_PAIRS)]


@dataclass
class PretrainResult:
    """The trained model (fp32), its per-step history, the held-out test set and the wall time."""

    loaded: LoadedModel
    test: Corpus
    history: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def render_corpus(n: int, seed: int, image_size: int) -> Corpus:
    """``n`` images balanced over every object × background pair (the captions are drawn per step)."""
    corpus = synthetic.pretraining_corpus(n, seed, image_size)
    images = torch.from_numpy(corpus.images).permute(0, 3, 1, 2).contiguous()
    return Corpus(images, corpus.object_ids, corpus.background_ids, corpus.colour_ids)


def eval_corpus(config: PretrainConfig) -> Corpus:
    """The held-out balanced test set: ``eval_per_pair`` images of each pair, from ``eval_seed``."""
    if config.eval_seed == config.seed:
        raise ValueError("pretrain.eval_seed must differ from pretrain.seed, or the test set repeats training images")
    return render_corpus(config.eval_per_pair * N_PAIRS, config.eval_seed, config.image_size)


def batch_indices(corpus: Corpus, config: PretrainConfig, step: int) -> torch.Tensor:
    """The samples of ``step``: ``batch_size / 36`` images of every object × background pair.

    Balanced batches keep CLIP's loss honest in a world of 36 concept pairs: with one image per
    pair no two-concept caption of the batch describes another image of the batch (no false
    negatives), and every object is contrasted with every other on each background. Each pass
    over the corpus draws a fresh permutation of every pair's images.
    """
    per_pair = config.batch_size // N_PAIRS
    members = corpus.pair_members
    per_pass = min(len(m) for m in members) // per_pair
    epoch, position = divmod(step, per_pass)
    generator = seeded_generator(config.seed, 1, epoch)
    window = slice(position * per_pair, (position + 1) * per_pair)
    chosen = [torch.from_numpy(m)[torch.randperm(len(m), generator=generator)[window]] for m in members]
    return torch.cat(chosen)


def object_caption(object_id: int, rng: np.random.Generator) -> synthetic.Caption:
    """A caption naming only the object, in one of the world's object-only phrasings."""
    templates = synthetic.OBJECT_CAPTION_TEMPLATES
    text = templates[int(rng.integers(len(templates)))].format(object=synthetic.OBJECTS[object_id])
    return synthetic.Caption(text, object_id, None, None)


def colour_caption(colour_id: int, rng: np.random.Generator) -> synthetic.Caption:
    """A caption naming only the object's colour ("a magenta shape.")."""
    templates = synthetic.COLOUR_CAPTION_TEMPLATES
    text = templates[int(rng.integers(len(templates)))].format(colour=synthetic.COLOURS[colour_id])
    return synthetic.Caption(text, None, None, colour_id)


def caption_positives(corpus: Corpus, indices: torch.Tensor, captions: Sequence[synthetic.Caption]) -> torch.Tensor:
    """Boolean (images, captions): True where the caption describes the image (every concept it names matches)."""
    ids = [
        (int(corpus.object_ids[i]), int(corpus.background_ids[i]), int(corpus.colour_ids[i])) for i in indices.tolist()
    ]
    return torch.tensor([[caption.describes(*image) for caption in captions] for image in ids])


def batch_captions(corpus: Corpus, indices: torch.Tensor, config: PretrainConfig, step: int) -> list[synthetic.Caption]:
    """A fresh phrasing per sample and step: object+background, object only or background only.

    During the first ``object_only_steps`` steps every caption names the object only (see
    :class:`PretrainConfig`). With ``colour_prob > 0`` captions may name the colour too.
    """
    rng = np.random.default_rng([config.seed, 2, step])
    if step < config.object_only_steps:
        return [object_caption(int(corpus.object_ids[i]), rng) for i in indices.tolist()]
    if step < config.object_only_steps + config.colour_only_steps:
        return [colour_caption(int(corpus.colour_ids[i]), rng) for i in indices.tolist()]
    return [
        synthetic.describe(
            int(corpus.object_ids[i]),
            int(corpus.background_ids[i]),
            rng,
            config.single_concept_prob,
            int(corpus.colour_ids[i]),
            config.colour_prob,
        )
        for i in indices.tolist()
    ]


# --------------------------------------------------------------------------------------------
# Training: fine-tuning's optimiser groups, schedule shape, crops and optimiser step (training)
# --------------------------------------------------------------------------------------------


def curriculum_schedule(optimizer: torch.optim.Optimizer, config: PretrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to zero within each phase (object-only captions, then all)."""
    phases = [(0, config.object_only_steps), (config.object_only_steps, config.steps)]
    phases = [(start, end) for start, end in phases if end > start]

    def factor(step: int) -> float:
        start, end = next(((a, b) for a, b in phases if step < b), phases[-1])
        return warmup_cosine(step - start, min(config.warmup_steps, end - start), end - start)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_step(
    loaded: LoadedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    corpus: Corpus,
    config: PretrainConfig,
    step: int,
    device: torch.device,
) -> dict[str, float]:
    """One optimiser step of CLIP's contrastive loss on a batch of images and fresh captions."""
    model = loaded.model
    indices = batch_indices(corpus, config, step)
    pixels = batch_pixels(loaded, corpus.images, indices, config, seeded_generator(config.seed, 3, step), device=device)
    captions = batch_captions(corpus, indices, config, step)
    tokens = loaded.tokenizer([caption.text for caption in captions]).to(device)
    image_features = F.normalize(model.encode_image(pixels), dim=-1)
    text_features = F.normalize(model.encode_text(tokens), dim=-1)
    if config.multi_positive:
        positives = caption_positives(corpus, indices, captions).to(device)
        loss = multi_positive_contrastive_loss(image_features, text_features, logit_scale(model), positives)
    else:
        loss = clip_contrastive_loss(image_features, text_features, logit_scale(model))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    lr = optimizer_step(model, optimizer, scheduler)
    return {"loss": float(loss.detach()), "lr": lr, "logit_scale": float(logit_scale(model).detach())}


def initial_model(config: PretrainConfig, device: torch.device | str = "cpu") -> LoadedModel:
    """The model before the first step: ``init_weights`` (a warm start) or random from ``init_seed``."""
    spec = ModelSpec(config.architecture, pretrained=config.init_weights, init_seed=config.init_seed)
    loaded = create_model(spec, device=device)
    if config.init_logit_scale is not None:
        with torch.no_grad():
            loaded.model.logit_scale.fill_(math.log(config.init_logit_scale))
    return loaded


def pretrain(config: PretrainConfig) -> PretrainResult:
    """Pretrain from random initialisation or ``init_weights``; :func:`stored_weights` then gives the file and its report."""
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    device = resolve_device(config.device)
    started = time.perf_counter()
    loaded = initial_model(config, device)
    corpus = render_corpus(config.corpus_size, config.seed, config.image_size)
    test = eval_corpus(config)
    logger.info(
        "pretrain: rendered %d training and %d test images in %.1f s",
        len(corpus),
        len(test),
        time.perf_counter() - started,
    )
    optimizer = adamw(loaded.model, config.lr, config.weight_decay)
    scheduler = curriculum_schedule(optimizer, config)
    history: list[dict[str, float]] = []
    for step in range(config.steps):
        loaded.model.train()
        record = {"step": step + 1, **training_step(loaded, optimizer, scheduler, corpus, config, step, device)}
        if config.eval_every and ((step + 1) % config.eval_every == 0 or step + 1 == config.steps):
            record |= {
                f"zero_shot_{key}": value for key, value in zero_shot_accuracies(loaded, test, config, device).items()
            }
            logger.info(
                "pretrain step %d/%d: loss %.4f, τ %.1f, zero-shot %s, %.0f s",
                step + 1,
                config.steps,
                record["loss"],
                record["logit_scale"],
                ", ".join(f"{concept} {record[f'zero_shot_{concept}']:.3f}" for concept in config.concepts),
                time.perf_counter() - started,
            )
        history.append(record)
    loaded.model.eval()
    return PretrainResult(loaded, test, history, round(time.perf_counter() - started, 1))


# --------------------------------------------------------------------------------------------
# Zero-shot evaluation and storage
# --------------------------------------------------------------------------------------------


def _labels(corpus: Corpus, concept: str) -> np.ndarray:
    labels = {
        "objects": corpus.object_ids,
        "backgrounds": corpus.background_ids,
        "colours": corpus.colour_ids,
        "coloured_objects": corpus.object_ids * len(synthetic.COLOURS) + corpus.colour_ids,
    }
    if concept not in labels:
        raise ValueError(f"concept must be one of {sorted(labels)}, got {concept!r}")
    return labels[concept]


def zero_shot_predictions(
    loaded: LoadedModel,
    features: torch.Tensor,
    concept: str,
    config: PretrainConfig,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Argmax over the concept's classes (prompt-ensemble head from the current text tower)."""
    names = config.concepts[concept]
    head = zero_shot_head(loaded.model, loaded.tokenizer, names, config.prompts(concept), device=device).cpu()
    return (features @ head.T).argmax(dim=1).numpy()


def _image_features(loaded: LoadedModel, corpus: Corpus, device: torch.device | str) -> torch.Tensor:
    pixels = normalise_images(corpus.images, loaded.image_mean, loaded.image_std)
    return encode_images(loaded.model, pixels, device=device)


def zero_shot_accuracies(
    loaded: LoadedModel, test: Corpus, config: PretrainConfig, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """Zero-shot top-1 on ``test`` with each concept's names as the classes (objects, backgrounds, …)."""
    features = _image_features(loaded, test, device)
    return {
        concept: float(
            (zero_shot_predictions(loaded, features, concept, config, device) == _labels(test, concept)).mean()
        )
        for concept in config.concepts
    }


def zero_shot_report(
    loaded: LoadedModel, test: Corpus, config: PretrainConfig, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Accuracy, per-class accuracy and worst class of each concept, plus what the test set was."""
    features = _image_features(loaded, test, device)
    report: dict[str, Any] = {"n_test": len(test), "eval_seed": config.eval_seed, "chance": {}}
    for concept, names in config.concepts.items():
        labels = _labels(test, concept)
        correct = zero_shot_predictions(loaded, features, concept, config, device) == labels
        per_class = {name: float(correct[labels == k].mean()) for k, name in enumerate(names)}
        report[concept] = {
            "accuracy": float(correct.mean()),
            "worst_class_accuracy": min(per_class.values()),
            "per_class": per_class,
        }
        report["chance"][concept] = 1.0 / len(names)
    return report


def round_weights(model: torch.nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Cast the floating weights to ``dtype`` (the stored file) and load them back into ``model``.

    Returns the cast state dict; afterwards the model computes exactly what the stored file gives.
    """
    state = {
        key: (value.detach().to(dtype) if value.is_floating_point() else value.detach()).cpu().contiguous()
        for key, value in model.state_dict().items()
    }
    load_state_dict(model, state, source=f"{dtype} weights")
    return state


def stored_weights(
    result: PretrainResult, config: PretrainConfig, dtype: torch.dtype = torch.float16
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights as stored (cast to ``dtype``) and the zero-shot report *of those* weights."""
    state = round_weights(result.loaded.model, dtype)
    report = zero_shot_report(result.loaded, result.test, config, resolve_device(config.device))
    report |= {
        "last_evaluations": last_evaluations(result.history),
        "train_wall_s": result.wall_s,
        "stored_dtype": str(dtype).removeprefix("torch."),
        "config": config.as_dict(),
    }
    return state, report


def last_evaluations(history: list[dict[str, float]], count: int = 3) -> list[dict[str, float]]:
    """The last ``count`` periodic zero-shot evaluations (step, lr, accuracies): flat when converged."""
    evaluated = [record for record in history if any(key.startswith("zero_shot_") for key in record)]
    return [
        {key: value for key, value in record.items() if key in ("step", "lr") or key.startswith("zero_shot_")}
        for record in evaluated[-count:]
    ]

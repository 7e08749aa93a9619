"""open_clip models: creation from a local file or a pretrained tag, encoding, and the zero-shot head.

No Kedro here. Weights never come from the network silently: a tag that is not in the local cache
fails in seconds with a message naming the file to provide (docs/stack-notes.md).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from starft_pipeline.core.configs import bounded, check_fields
from starft_pipeline.data.tasks import fill_template

if TYPE_CHECKING:
    import open_clip

logger = logging.getLogger(__name__)

_CONFIG_DIR = resources.files("starft_pipeline") / "assets" / "model_configs"


@functools.cache
def open_clip_with_configs() -> ModuleType:
    """open_clip with this project's model configs (``starft-tiny-vit``) registered.

    Imported on first use, not with this module: open_clip pulls in torchvision and torch._dynamo,
    seconds that every `kedro` command (registry, parameter checks) would otherwise pay.
    """
    import open_clip

    open_clip.add_model_config(Path(str(_CONFIG_DIR)))
    return open_clip


WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to build: an open_clip architecture plus where its weights come from.

    ``pretrained`` is a path to a weights file (safetensors preferred), an open_clip pretrained tag
    such as ``"openai"`` (used only if it is already in the local cache or the network is allowed),
    or ``None`` for random initialisation. ``pretrained_tag`` names the open_clip tag a weights
    *file* was downloaded as (e.g. ``"openai"``): its QuickGELU setting is then checked against the
    architecture and its preprocessing (mean, std, resize) used, as for the tag itself. Without it a
    file is trusted to fit the architecture's name (``ViT-B-16-quickgelu`` for OpenAI's weights).
    """

    architecture: str
    pretrained: str | None = None
    pretrained_tag: str | None = None
    allow_download: bool = False
    cache_dir: str | None = None
    init_seed: int = bounded(0, ge=0)  # random initialisation is deterministic too

    def __post_init__(self) -> None:
        check_fields(self, "model ")

    def identity(self) -> dict[str, str]:
        """What the model's outputs depend on: architecture and the weights' content (or tag, or seed)."""
        from starft_pipeline.core.io_utils import file_digest

        if self.pretrained is None:
            weights = f"random-init:{self.init_seed}"
        elif _is_weight_file(self.pretrained) and Path(self.pretrained).is_file():
            weights = f"sha256:{file_digest(self.pretrained)}"
        else:
            weights = f"tag:{self.pretrained}"
        identity = {"architecture": self.architecture, "weights": weights}
        if self.pretrained_tag is not None:  # the tag's preprocessing changes the features
            identity["pretrained_tag"] = self.pretrained_tag
        return identity

    def tag(self) -> str | None:
        """The open_clip tag the weights come from: ``pretrained`` itself, or a file's ``pretrained_tag``."""
        if self.pretrained is not None and not _is_weight_file(self.pretrained):
            return self.pretrained
        return self.pretrained_tag


@dataclass
class LoadedModel:
    """A model with its tokenizer and the image preprocessing its weights expect (open_clip's eval
    transform: resize by ``resize_mode`` with ``interpolation`` to ``image_size``, centre crop, mean/std)."""

    model: open_clip.CLIP
    tokenizer: Any
    image_size: int
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


def _is_weight_file(pretrained: str) -> bool:
    return pretrained.endswith(WEIGHT_SUFFIXES) or os.sep in pretrained or "/" in pretrained


def _check_pretrained_available(spec: ModelSpec) -> None:
    """Fail fast when weights would have to be downloaded and downloading is not allowed."""
    pretrained = spec.pretrained
    if pretrained is None:
        return
    if _is_weight_file(pretrained):
        if not Path(pretrained).is_file():
            raise FileNotFoundError(
                f"model weights file {pretrained!r} does not exist. Set `model.pretrained` to an "
                "existing .safetensors/.pt file, or to an open_clip tag that is in your local cache."
            )
        return
    known = open_clip_with_configs().list_pretrained_tags_by_model(spec.architecture)
    if pretrained not in known:
        raise ValueError(
            f"open_clip has no pretrained tag {pretrained!r} for {spec.architecture!r}; known tags: {known}"
        )
    if spec.allow_download:
        return
    _require_cached(spec)


def check_weights_available(spec: ModelSpec) -> None:
    """Raise, naming what to provide, when ``spec``'s weights cannot be loaded here; builds no model.

    A weights file must exist (a safetensors file must have a readable header); a tag must be an
    open_clip tag of the architecture and, unless ``allow_download``, be in the local cache.
    """
    _check_pretrained_available(spec)
    if spec.pretrained and spec.pretrained.endswith(".safetensors"):
        try:
            with safe_open(spec.pretrained, framework="pt"):
                pass
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"model weights file {spec.pretrained!r} is not a readable safetensors file ({error}). "
                "Point `model.pretrained` to a complete .safetensors file (a download may have been cut short)."
            ) from error


QUICK_GELU_SUFFIX = "-quickgelu"
#: The preprocessing keys of an open_clip pretrained config that :class:`LoadedModel` carries.
PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


class ArchitectureMismatch(ValueError):
    """``model.architecture`` builds a different network than the weights were trained as."""


def _activation(quick_gelu: bool) -> str:
    return "QuickGELU" if quick_gelu else "plain GELU"


def architecture_mismatch(
    architecture: str, weights: str, model_config: Mapping[str, Any], weights_config: Mapping[str, Any]
) -> str | None:
    """Why ``architecture`` (its open_clip ``model_config``) cannot take ``weights``, or None when it can.

    ``weights_config`` describes the weights: open_clip's pretrained config of their tag, or the model
    config recorded with a file. Compared: QuickGELU (open_clip builds the architecture's activation,
    loads the other's weights into it and only warns "QuickGELU mismatch") and the image size when the
    weights' config states one. Pure: no model is built, nothing is read.
    """
    model_quick = bool(model_config.get("quick_gelu", False))
    weights_quick = bool(weights_config.get("quick_gelu", False))
    if model_quick != weights_quick:
        if weights_quick:
            fix = f"`model.architecture: {architecture}{QUICK_GELU_SUFFIX}`"
        elif architecture.endswith(QUICK_GELU_SUFFIX):
            fix = f"`model.architecture: {architecture.removesuffix(QUICK_GELU_SUFFIX)}`"
        else:
            fix = "an architecture whose open_clip config has no `quick_gelu: true`"
        return (
            f"`model.architecture` {architecture!r} builds {_activation(model_quick)} but the weights {weights} "
            f"were trained with {_activation(weights_quick)} (open_clip's config of them says "
            f"quick_gelu={weights_quick}); open_clip would load them into the wrong activation with only a "
            f"warning, and every feature would be wrong. Set {fix}."
        )
    model_size = model_config.get("vision_cfg", {}).get("image_size")
    weights_size = weights_config.get("size", weights_config.get("vision_cfg", {}).get("image_size"))
    if weights_size is not None and model_size is not None and _square(weights_size) != _square(model_size):
        return (
            f"`model.architecture` {architecture!r} takes {model_size} px images but the weights {weights} "
            f"expect {weights_size} px. Set `model.architecture` to the architecture the weights were trained as."
        )
    return None


def _square(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[-1]))


def pretrained_config(architecture: str, tag: str) -> dict[str, Any]:
    """open_clip's pretrained config of ``tag`` for ``architecture`` or its plain-GELU base name; {} if none.

    The base name covers a QuickGELU variant of a tag that only the base lists (its config then
    reports the mismatch).
    """
    open_clip = open_clip_with_configs()
    base = architecture.removesuffix(QUICK_GELU_SUFFIX)
    return dict(open_clip.get_pretrained_cfg(architecture, tag) or open_clip.get_pretrained_cfg(base, tag))


def _recorded_architecture(path: str) -> str | None:
    """The architecture a safetensors file's header names (this project's exports record it), else None."""
    if not path.endswith(".safetensors"):
        return None
    try:
        with safe_open(path, framework="pt") as handle:
            recorded = (handle.metadata() or {}).get("architecture")
    except (SafetensorError, OSError):
        return None  # an unreadable file is reported by check_weights_available
    try:
        value = json.loads(recorded) if recorded else None
    except json.JSONDecodeError:
        value = recorded
    return value if isinstance(value, str) else None


def _weights_description(spec: ModelSpec) -> tuple[str, dict[str, Any]] | None:
    """How to name ``spec``'s weights in a message, and their config; None when nothing says what they are.

    open_clip is imported only when there is something to look up (checking parameters stays light).
    """
    tag = spec.tag()
    if tag is not None:
        config = pretrained_config(spec.architecture, tag)
        if not config and tag == spec.pretrained:
            return None  # an unknown tag: check_weights_available names the known ones
        if not config:
            raise ValueError(
                f"open_clip has no pretrained tag {tag!r} for {spec.architecture!r} (nor for its plain-GELU "
                f"base); set `model.pretrained_tag` to the tag the weights file was downloaded as, or to null"
            )
        where = f"{tag!r}" if tag == spec.pretrained else f"{spec.pretrained!r} (open_clip tag {tag!r})"
        return where, config
    recorded = _recorded_architecture(spec.pretrained) if spec.pretrained else None
    if not recorded or recorded == spec.architecture:
        return None
    recorded_config = open_clip_with_configs().get_model_config(recorded)
    if recorded_config is None:
        return None  # an architecture open_clip does not know: nothing to compare with
    return f"{spec.pretrained!r} (recorded as architecture {recorded!r})", recorded_config


def check_architecture_fits_weights(spec: ModelSpec) -> None:
    """Raise :class:`ArchitectureMismatch` when ``spec.architecture`` is not what its weights were trained as.

    The weights are known by their tag (``pretrained`` or, for a file, ``pretrained_tag``) or by the
    architecture recorded in a safetensors file's header; otherwise the architecture's name is trusted.
    """
    if spec.pretrained_tag not in (None, spec.tag()):
        raise ValueError(
            f"`model.pretrained` is the tag {spec.pretrained!r} but `model.pretrained_tag` says "
            f"{spec.pretrained_tag!r}; `pretrained_tag` names where a weights file came from: set it to null"
        )
    described = _weights_description(spec) if spec.pretrained else None
    model_config = open_clip_with_configs().get_model_config(spec.architecture) if described else None
    if described is None or model_config is None:
        return  # nothing says what the weights are, or an architecture open_clip reports itself
    problem = architecture_mismatch(spec.architecture, described[0], model_config, described[1])
    if problem:
        raise ArchitectureMismatch(problem)


def _hub_files(architecture: str, tag: str) -> tuple[str, list[str]] | None:
    """The Hugging Face repo and the files open_clip would fetch for ``tag`` (safetensors first); None for a URL."""
    open_clip = open_clip_with_configs()
    hub = open_clip.get_pretrained_cfg(architecture, tag).get("hf_hub", "")
    if not hub:
        return None
    repo, filename = os.path.split(hub)
    if not filename:
        return repo, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if filename.endswith((".bin", ".pth")):
        return repo, [filename[:-4] + ".safetensors", filename]
    return repo, [filename]


def _require_cached(spec: ModelSpec) -> None:
    """Raise at once, naming the file to provide, when a pretrained tag is not in the local cache.

    Without network the hub would retry for ~45 s first (docs/stack-notes.md). huggingface_hub reads
    ``HF_HUB_OFFLINE`` only when imported, so the cache is inspected here instead.
    """
    from huggingface_hub import try_to_load_from_cache

    if spec.pretrained is None:  # random initialisation: nothing to look for
        return
    open_clip = open_clip_with_configs()
    config = open_clip.get_pretrained_cfg(spec.architecture, spec.pretrained)
    hub = _hub_files(spec.architecture, spec.pretrained)
    if hub is not None:
        repo, names = hub
        if any(isinstance(try_to_load_from_cache(repo, name, cache_dir=spec.cache_dir), str) for name in names):
            return
        source = f"https://huggingface.co/{repo}/resolve/main/{names[0]} (or {names[-1]})"
    else:
        url = config.get("url", "")
        if (Path(spec.cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)).is_file():
            return
        source = url
    raise FileNotFoundError(
        f"open_clip weights {spec.architecture}/{spec.pretrained} are not in the local cache "
        f"({spec.cache_dir or 'the default Hugging Face cache'}) and `model.allow_download` is false. "
        f"Download {source} on a connected machine and set `model.pretrained` to the local file "
        f"with `model.pretrained_tag: {spec.pretrained}` (its QuickGELU and preprocessing then follow the tag), "
        "or set `model.allow_download: true`."
    )


@contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Keep huggingface_hub from the network (a cached file then loads without retries)."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = previous or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


@contextmanager
def _quiet_random_init_warning(active: bool) -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning when the weights come from our own file next."""
    if not active:
        yield
        return
    root, drop = logging.getLogger(), _DropRandomInitWarning()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def create_model(spec: ModelSpec, device: torch.device | str = "cpu", weights_follow: bool = False) -> LoadedModel:
    """Build the open_clip model of ``spec`` with its weights, tokenizer and preprocessing constants.

    ``weights_follow``: the caller replaces every weight next (an export), so open_clip's warning that
    the model starts from random weights does not apply."""
    open_clip = open_clip_with_configs()
    check_architecture_fits_weights(spec)  # first: it needs no weights, only configs
    _check_pretrained_available(spec)
    pretrained = spec.pretrained
    state_dict_file = pretrained if pretrained and _is_weight_file(pretrained) else None
    torch.manual_seed(spec.init_seed)
    try:
        with _hub_offline(not spec.allow_download), _quiet_random_init_warning(bool(state_dict_file) or weights_follow):
            model = open_clip.create_model(
                spec.architecture,
                pretrained=None if state_dict_file else pretrained,
                cache_dir=spec.cache_dir,
                device=device,
            )
    except RuntimeError as error:
        if pretrained and not state_dict_file:
            raise RuntimeError(
                f"could not load open_clip weights {spec.architecture}/{pretrained} without network: "
                f"{error}. Download them on a connected machine and set `model.pretrained` to the "
                "local .safetensors file, or set `model.allow_download: true`."
            ) from error
        raise
    if state_dict_file:
        load_weights(model, state_dict_file)
        logger.info("model %s: weights loaded from %s", spec.architecture, state_dict_file)
    visual_size = model.visual.image_size
    image_size = visual_size[0] if isinstance(visual_size, tuple) else int(visual_size)
    preprocess = _preprocessing(spec, model)
    return LoadedModel(
        model=model,
        tokenizer=open_clip.get_tokenizer(spec.architecture),
        image_size=image_size,
        image_mean=tuple(preprocess.get("mean") or open_clip.OPENAI_DATASET_MEAN),
        image_std=tuple(preprocess.get("std") or open_clip.OPENAI_DATASET_STD),
        interpolation=str(preprocess.get("interpolation") or "bicubic"),
        resize_mode=str(preprocess.get("resize_mode") or "shortest"),
    )


def _preprocessing(spec: ModelSpec, model: torch.nn.Module) -> dict[str, Any]:
    """Mean, std, interpolation and resize mode of the weights: what open_clip set on the model (its
    tag's config when loaded by tag), with a weights file's ``pretrained_tag`` config on top."""
    visual = model.visual
    settings = {
        **(getattr(visual, "preprocess_cfg", None) or {}),
        "mean": getattr(visual, "image_mean", None),
        "std": getattr(visual, "image_std", None),
    }
    if spec.pretrained and _is_weight_file(spec.pretrained) and spec.pretrained_tag:
        tag_config = pretrained_config(spec.architecture, spec.pretrained_tag)
        settings.update({key: tag_config[key] for key in PREPROCESS_KEYS if key in tag_config})
    return settings


def load_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a state dict from safetensors, or from a torch file with ``weights_only=True`` (no pickle code)."""
    path = str(path)
    if path.endswith(".safetensors"):
        state_dict = load_file(path)
    else:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        state_dict = state_dict.get("state_dict", state_dict)
        state_dict = {key.removeprefix("module."): value for key, value in state_dict.items()}
    load_state_dict(model, state_dict, source=path)


def load_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str = "weights") -> None:
    """Load weights strictly, casting to the model's dtypes (weights may be stored in fp16)."""
    reference = model.state_dict()
    state_dict = {
        key: value.to(reference[key].dtype) if key in reference else value for key, value in state_dict.items()
    }
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{source} do(es) not fit the model: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}. Check `model.architecture`."
        )


def save_weights(model: torch.nn.Module, path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> None:
    """Write the model's state dict as safetensors (optionally cast, e.g. to fp16 to halve the file)."""
    from starft_pipeline.core.io_utils import atomic_path

    tensors = {
        key: (value.to(dtype) if dtype is not None and value.is_floating_point() else value).contiguous()
        for key, value in model.state_dict().items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; anything else is passed to torch.

    CUDA asked for but unavailable is an error naming the torch build and the driver (run time, not
    when parameters are checked: a recipe that asks for CUDA validates anywhere).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(cuda_unavailable_message(name, torch.__version__, torch.version.cuda, nvidia_driver()))
    return device


#: Where the kernel module states the NVIDIA driver's version.
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")


def nvidia_driver(version_file: Path = NVIDIA_DRIVER_FILE) -> str | None:
    """The NVIDIA driver's version (from the kernel module, else ``nvidia-smi``), or None when none is found."""
    try:
        found = re.search(r"Kernel Module(?: for [\w.]+)?\s+([\d.]+)", version_file.read_text(encoding="utf-8"))
        if found:
            return found.group(1)
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def cuda_unavailable_message(requested: str, torch_version: str, torch_cuda: str | None, driver: str | None) -> str:
    """Why ``requested`` cannot be used and what to do, from the installed torch build and driver."""
    build = f"torch {torch_version} built for CUDA {torch_cuda}" if torch_cuda else f"torch {torch_version} (CPU-only)"
    found = (
        f"NVIDIA driver {driver}"
        if driver
        else "no NVIDIA driver found (no /proc/driver/nvidia/version, no nvidia-smi)"
    )
    if not torch_cuda:
        advice = "This torch cannot use a GPU: install a CUDA build from the index that matches your driver"
    elif driver is None:
        advice = "No GPU is visible: run where an NVIDIA GPU and driver are (in a container: `--gpus all`)"
    else:
        advice = (
            "The driver may be too old for this build (CUDA 13 builds need driver >= 580, CUDA 12 builds >= 525): "
            "install torch from the index that matches the driver, or update the driver"
        )
    return (
        f"device {requested!r} was asked for but torch.cuda.is_available() is False: {build}, {found}. "
        f'{advice} (docs/gpu-and-performance.md, "Installing a CUDA build of torch"). '
        "To run without a GPU, set the stage's `device: cpu` or `auto`."
    )


def _batches(n: int, batch_size: int) -> range:
    return range(0, n, batch_size)


@torch.no_grad()
def encode_images(
    model: open_clip.CLIP, images: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """L2-normalised image features of preprocessed ``images`` (N, 3, H, W), returned on the CPU."""
    model.eval()
    chunks = [
        F.normalize(model.encode_image(images[start : start + batch_size].to(device)).float(), dim=-1).cpu()
        for start in _batches(len(images), batch_size)
    ]
    return torch.cat(chunks) if chunks else torch.empty(0, model.text_projection.shape[-1])


def encode_texts(
    model: open_clip.CLIP,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    grad: bool = False,
) -> torch.Tensor:
    """L2-normalised text features of ``texts``; with ``grad`` the graph is kept (training)."""
    with torch.set_grad_enabled(grad):
        chunks = [
            F.normalize(
                model.encode_text(tokenizer(list(texts[start : start + batch_size])).to(device)).float(), dim=-1
            )
            for start in _batches(len(texts), batch_size)
        ]
    return torch.cat(chunks)


def zero_shot_head(
    model: open_clip.CLIP,
    tokenizer: Any,
    class_names: Sequence[str],
    templates: Sequence[str],
    device: torch.device | str = "cpu",
    grad: bool = False,
) -> torch.Tensor:
    """CLIP's zero-shot classifier: per class, normalise each template's embedding, average, renormalise.

    Returns (n_classes, d). Built from the *current* text encoder, so it follows fine-tuning.
    """
    if not class_names or not templates:
        raise ValueError("zero_shot_head needs at least one class name and one template")
    prompts = [fill_template(template, name) for name in class_names for template in templates]
    features = encode_texts(model, tokenizer, prompts, device=device, grad=grad)
    per_class = features.reshape(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(per_class, dim=-1)


def logit_scale(model: open_clip.CLIP) -> torch.Tensor:
    """The model's (exponentiated) logit scale τ."""
    return model.logit_scale.exp()


def state_dict_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the weights, e.g. the zero-shot weights for WiSE-FT."""
    return {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}

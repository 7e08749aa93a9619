"""An MLflow pyfunc image classifier over an exported open_clip checkpoint (MLflow "models from code").

MLflow copies THIS FILE into the saved model and runs it at load time, so it imports nothing from
``starft_pipeline``: a model saved by the project loads wherever ``mlflow``, ``open_clip_torch``,
``torch``, ``safetensors`` and ``pillow`` are installed. No Kedro here.

The model's artifacts (written by :func:`starft_pipeline.models.export.save_pyfunc_classifier`):

- ``checkpoint``: the open_clip checkpoint (towers only; ``open_clip.create_model_and_transforms``
  loads it as is);
- ``classifier``: the linear head over L2-normalised image features, safetensors tensors
  ``weight`` (C, d) and ``bias`` (C,), its class names, prompt templates and (when known) the
  open_clip ``pretrained_tag`` of the weights in the header: images are preprocessed as that tag's
  config says (mean, std, interpolation, resize mode);
- ``model_config``: the open_clip architecture config (JSON), registered with
  ``open_clip.add_model_config`` so that a custom architecture loads too.

Input: a DataFrame with a column ``image`` holding encoded image files (PNG, JPEG … bytes). Output:
``predicted_class`` and one probability column per class name, rows in input order. The parameter
``class_names`` (a list of strings) classifies zero-shot among other classes instead: CLIP's head
from the model's own text tower and the stored prompt templates.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
import torch.nn.functional as F
from mlflow.pyfunc import PythonModel

IMAGE_COLUMN = "image"
PREDICTED_COLUMN = "predicted_class"
BATCH_SIZE = 64
#: A pretrained config's preprocessing keys → ``create_model_and_transforms``' arguments.
PREPROCESS_ARGUMENTS = {
    "mean": "image_mean",
    "std": "image_std",
    "interpolation": "image_interpolation",
    "resize_mode": "image_resize_mode",
}


def _rgb(data: bytes) -> Any:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))  # alpha composited on white
            return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")


def _tag_preprocessing(open_clip: Any, architecture: str, tag: str | None) -> dict[str, Any]:
    """open_clip's preprocessing arguments for the weights' tag (a file alone gets open_clip's defaults)."""
    if not tag:
        return {}
    config = open_clip.get_pretrained_cfg(architecture, tag) or open_clip.get_pretrained_cfg(
        architecture.removesuffix("-quickgelu"), tag
    )
    return {argument: config[key] for key, argument in PREPROCESS_ARGUMENTS.items() if key in config}


def _fill(template: str, class_name: str) -> str:
    """A prompt template's class slot, ``{c}`` or the OpenAI style ``{}``, filled."""
    return template.replace("{c}", class_name) if "{c}" in template else template.replace("{}", class_name)


class ClipClassifier(PythonModel):
    """Images (encoded bytes) → class probabilities, through open_clip's image tower and a linear head."""

    def load_context(self, context: Any) -> None:
        import open_clip
        from safetensors import safe_open

        artifacts = context.artifacts
        config_file = Path(artifacts["model_config"])
        architecture = config_file.stem
        if architecture not in open_clip.list_models():
            open_clip.add_model_config(config_file)
        with safe_open(artifacts["classifier"], framework="pt") as handle:
            header = handle.metadata() or {}
            self.weight = handle.get_tensor("weight").float()
            self.bias = handle.get_tensor("bias").float()
        tag = json.loads(header["pretrained_tag"]) if "pretrained_tag" in header else None
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            architecture, pretrained=artifacts["checkpoint"], **_tag_preprocessing(open_clip, architecture, tag)
        )
        self.model.eval()
        self.class_names = list(json.loads(header["class_names"]))
        self.templates = list(json.loads(header["templates"]))
        self.tokenizer = open_clip.get_tokenizer(architecture)

    @torch.no_grad()
    def zero_shot_head(self, class_names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP's zero-shot classifier of ``class_names``: per class, normalise each template's text
        embedding, average, renormalise; scaled by the logit scale τ, bias 0."""
        prompts = [_fill(template, name) for name in class_names for template in self.templates]
        features = F.normalize(self.model.encode_text(self.tokenizer(prompts)).float(), dim=-1)
        per_class = F.normalize(features.reshape(len(class_names), len(self.templates), -1).mean(dim=1), dim=-1)
        return self.model.logit_scale.exp().float() * per_class, torch.zeros(len(class_names))

    @torch.no_grad()
    def probabilities(self, images: list[bytes], weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Softmax over the classes of ``f · Wᵀ + b``, ``f`` the normalised image features; (N, C)."""
        chunks = []
        for start in range(0, len(images), BATCH_SIZE):
            pixels = torch.stack([self.preprocess(_rgb(data)) for data in images[start : start + BATCH_SIZE]])
            features = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
            chunks.append((features @ weight.T + bias).softmax(dim=-1))
        return torch.cat(chunks) if chunks else torch.empty(0, len(bias))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        if IMAGE_COLUMN not in model_input:
            raise ValueError(f"the input needs a column {IMAGE_COLUMN!r} of encoded images; got {list(model_input)}")
        class_names = list((params or {}).get("class_names") or [])
        weight, bias = self.zero_shot_head(class_names) if class_names else (self.weight, self.bias)
        class_names = class_names or self.class_names
        probabilities = self.probabilities([bytes(data) for data in model_input[IMAGE_COLUMN]], weight, bias)
        table = pd.DataFrame(probabilities.numpy().astype("float64"), columns=class_names)
        table.insert(0, PREDICTED_COLUMN, [class_names[i] for i in probabilities.argmax(dim=1).tolist()])
        return table


mlflow.models.set_model(ClipClassifier())

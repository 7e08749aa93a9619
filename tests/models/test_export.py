"""Models usable elsewhere: the open_clip checkpoint round trip, the MLflow pyfunc model, predict's CSV.

Small random-init models of the default architecture stand in for fine-tuned ones (what is tested is
the export, not the training); one contrastive method (no head) and one head method (FT).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.data.splits import load_image, normalise_images
from starft_pipeline.models.clip import (
    ModelSpec,
    create_model,
    encode_images,
    load_state_dict,
    logit_scale,
    state_dict_copy,
    zero_shot_head,
)
from starft_pipeline.models.export import LEARNED, ZERO_SHOT, classifier_path, save_pyfunc_classifier
from starft_pipeline.models.heads import ClassifierHead, attach_head, split_heads, weights_bundle
from starft_pipeline.models.predict import main as predict_main
from starft_pipeline.models.predict import project_classifier
from starft_pipeline.pipelines.export.nodes import export_open_clip, mlflow_input_example

ARCHITECTURE = "starft-tiny-vit"
CLASSES = ["circle", "square", "triangle"]
TEMPLATES = ["a photo of a {c}.", "a {c} on a background."]
TEACHER_MODEL = {"spec": {"architecture": ARCHITECTURE, "pretrained": None, "allow_download": False, "init_seed": 0}}
DATASET_INDEX = {
    "finetune_dataset": "shapes",
    "datasets": {
        "shapes": {
            "class_names": CLASSES,
            "templates": TEMPLATES,
            "n_places": 1,
            "group_names": CLASSES,
            "train_group_counts": [1, 1, 1],
        }
    },
}


def _fine_tuned(method: str, seed: int, with_head: bool) -> TensorBundle:
    """A weights bundle as the finetune stage writes it: other weights than the teacher's, FT with a head."""
    loaded = create_model(ModelSpec(ARCHITECTURE, init_seed=seed))
    if with_head:
        generator = torch.Generator().manual_seed(seed)
        dim = loaded.model.text_projection.shape[-1]
        head = ClassifierHead(
            torch.randn(len(CLASSES), dim, generator=generator),
            torch.randn(len(CLASSES), generator=generator),
            tuple(CLASSES),
        )
        attach_head(loaded.model, head)
    return weights_bundle(state_dict_copy(loaded.model), "shapes", CLASSES, {"method": method})


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five images in a folder (one in a subfolder, one not 32 px, one RGBA) and a file that is no image."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    sizes = {
        "a.png": (32, 32, 3),
        "b.jpg": (32, 32, 3),
        "c.png": (40, 48, 3),
        "sub/d.png": (32, 32, 3),
        "e.png": (32, 32, 4),
    }
    for name, shape in sizes.items():
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[TensorBundle, Path]]:
    """Per method: its weights bundle and the exported checkpoint path (classifier beside it)."""
    folder = tmp_path_factory.mktemp("open_clip")
    result = {}
    for method, seed, with_head in (("flyp", 1, False), ("ft", 2, True)):
        weights = _fine_tuned(method, seed, with_head)
        checkpoint, classifier = export_open_clip(weights, DATASET_INDEX, TEACHER_MODEL, {"device": "cpu"})
        checkpoint.save(folder / f"{method}.safetensors")
        classifier.save(folder / f"{method}_classifier.safetensors")
        result[method] = (weights, folder / f"{method}.safetensors")
    return result


@pytest.fixture(scope="module")
def models_dir(exported: dict[str, tuple[TensorBundle, Path]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/06_models as the finetune stage leaves it: <method>.safetensors weights bundles."""
    folder = tmp_path_factory.mktemp("06_models")
    for method, (weights, _) in exported.items():
        weights.save(folder / f"{method}.safetensors")
    return folder


def _pixels(folder: Path, names: list[str]) -> torch.Tensor:
    return torch.stack([load_image(folder / name, 32) for name in names])


@pytest.mark.parametrize("method", ["flyp", "ft"])
def test_an_exported_checkpoint_loads_with_open_clip_and_gives_the_pipelines_logits(
    method: str, exported: dict[str, tuple[TensorBundle, Path]], images: Path
) -> None:
    weights, checkpoint = exported[method]
    # What evaluation does: the teacher's architecture, the fine-tuned towers loaded into it.
    pipeline_model = create_model(ModelSpec(**TEACHER_MODEL["spec"]))
    state_dict, heads = split_heads(weights.tensors, weights.metadata)
    load_state_dict(pipeline_model.model, state_dict)
    # What a user elsewhere does: open_clip alone, the checkpoint as `pretrained` (loaded strictly).
    model, _, _ = open_clip.create_model_and_transforms(ARCHITECTURE, pretrained=str(checkpoint))
    tokenizer = open_clip.get_tokenizer(ARCHITECTURE)

    pixels = normalise_images(
        _pixels(images, ["a.png", "b.jpg", "c.png"]), pipeline_model.image_mean, pipeline_model.image_std
    )
    logits = []
    for clip, tok in ((pipeline_model.model, pipeline_model.tokenizer), (model, tokenizer)):
        features = encode_images(clip, pixels)
        classes = zero_shot_head(clip, tok, CLASSES, TEMPLATES)
        logits.append(logit_scale(clip).detach() * features @ classes.T)
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=1e-5)
    assert not torch.allclose(logits[0], torch.zeros_like(logits[0]))

    classifier = TensorBundle.load(classifier_path(checkpoint))
    assert classifier.metadata["class_names"] == CLASSES and classifier.metadata["templates"] == TEMPLATES
    assert classifier.metadata["architecture"] == ARCHITECTURE
    if heads:  # FT: its own learned head, exported beside the towers
        assert classifier.metadata["kind"] == LEARNED
        torch.testing.assert_close(classifier.tensors["weight"], heads["shapes"].weight)
        torch.testing.assert_close(classifier.tensors["bias"], heads["shapes"].bias)
    else:  # the zero-shot classifier from its own text tower: τ · class features, bias 0
        assert classifier.metadata["kind"] == ZERO_SHOT
        features = encode_images(model, pixels)
        torch.testing.assert_close(features @ classifier.tensors["weight"].T, logits[0], rtol=0, atol=1e-5)
        assert torch.count_nonzero(classifier.tensors["bias"]) == 0


def test_the_mlflow_model_loads_and_predicts_class_probabilities(
    exported: dict[str, tuple[TensorBundle, Path]], images: Path, models_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    _, checkpoint = exported["ft"]
    files = [images / name for name in ("a.png", "b.jpg", "sub/d.png")]
    save_pyfunc_classifier(tmp_path / "model", checkpoint, classifier_path(checkpoint), [files[0].read_bytes()])
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))

    table = model.predict(pd.DataFrame({"image": [path.read_bytes() for path in files]}))
    assert list(table.columns) == ["predicted_class", *CLASSES]
    assert [column.name for column in model.metadata.get_output_schema().inputs] == ["predicted_class", *CLASSES]
    np.testing.assert_allclose(table[CLASSES].sum(axis=1), 1.0, atol=1e-6)
    # The same probabilities as the project's own predict (same model, head and 32 px images).
    classifier = project_classifier("ft", TEACHER_MODEL, DATASET_INDEX, models_dir=models_dir)
    expected = classifier.probabilities(torch.stack([load_image(path, 32) for path in files])).numpy()
    np.testing.assert_allclose(table[CLASSES].to_numpy(), expected, atol=1e-5)
    assert list(table["predicted_class"]) == [CLASSES[i] for i in expected.argmax(axis=1)]


def test_predict_writes_one_row_per_image_with_probabilities(
    exported: dict[str, tuple[TensorBundle, Path]], images: Path, models_dir: Path, tmp_path: Path
) -> None:
    _, checkpoint = exported["flyp"]
    assert (
        predict_main(
            [
                "--model",
                str(checkpoint),
                "--images",
                str(images),
                "--out",
                str(tmp_path / "p.csv"),
                "--batch-size",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    table = pd.read_csv(tmp_path / "p.csv")
    assert list(table.columns) == ["file", "predicted_class", *CLASSES]
    assert list(table["file"]) == ["a.png", "b.jpg", "c.png", "e.png", "sub/d.png"]  # notes.txt left out
    np.testing.assert_allclose(table[CLASSES].sum(axis=1), 1.0, atol=1e-6)
    assert list(table["predicted_class"]) == list(table[CLASSES].idxmax(axis=1))
    # A method name reads the finetune stage's weights: the same model gives the same CSV.
    classifier = project_classifier("flyp", TEACHER_MODEL, DATASET_INDEX, models_dir=models_dir)
    by_name = classifier.probabilities(torch.stack([load_image(images / name, 32) for name in table["file"]])).numpy()
    np.testing.assert_allclose(table[CLASSES].to_numpy(), by_name, atol=1e-5)


def test_predict_names_what_is_missing(exported: dict[str, tuple[TensorBundle, Path]], tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--pipelines=finetune --namespaces=star"):
        project_classifier("star", TEACHER_MODEL, DATASET_INDEX, models_dir=tmp_path)
    with pytest.raises(
        FileNotFoundError, match=r"teacher_model.json does not exist; run `kedro run --pipelines=teacher`"
    ):
        predict_main(
            ["--model", "zero_shot", "--images", ".", "--out", str(tmp_path / "p.csv"), "--project", str(tmp_path)]
        )
    with pytest.raises(NotADirectoryError, match="predict.images"):
        predict_main(
            [
                "--model",
                str(exported["flyp"][1]),
                "--images",
                str(tmp_path / "nowhere"),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
    assert not (tmp_path / "p.csv").exists()


def test_the_mlflow_input_example_is_a_few_images_of_the_classifiers_data_set(
    exported: dict[str, tuple[TensorBundle, Path]], images: Path
) -> None:
    metadata = pd.DataFrame(
        {
            "dataset": "shapes",
            "split": [2, 1, 1],
            "y": 0,
            "place": 0,
            "path": [str(images / name) for name in ("a.png", "b.jpg", "c.png")],
        }
    )
    classifier = TensorBundle.load(classifier_path(exported["ft"][1]))
    example = mlflow_input_example(classifier, metadata, DATASET_INDEX, {"example_images": 1})
    assert example == [(images / "b.jpg").read_bytes()]  # val first


def test_the_mlflow_model_classifies_other_class_names_zero_shot(
    exported: dict[str, tuple[TensorBundle, Path]], images: Path, tmp_path: Path
) -> None:
    import mlflow

    _, checkpoint = exported["flyp"]  # a zero-shot classifier: its stored head is its text tower's
    files = [images / name for name in ("a.png", "sub/d.png")]
    save_pyfunc_classifier(tmp_path / "model", checkpoint, classifier_path(checkpoint), [files[0].read_bytes()])
    model = mlflow.pyfunc.load_model(str(tmp_path / "model"))
    frame = pd.DataFrame({"image": [path.read_bytes() for path in files]})

    stored = model.predict(frame)
    rebuilt = model.predict(frame, params={"class_names": CLASSES[::-1]})
    assert list(rebuilt.columns) == ["predicted_class", *CLASSES[::-1]]
    np.testing.assert_allclose(rebuilt[CLASSES].to_numpy(), stored[CLASSES].to_numpy(), atol=1e-5)
    other = model.predict(frame, params={"class_names": ["star", "ring"]})
    assert list(other.columns) == ["predicted_class", "star", "ring"]
    np.testing.assert_allclose(other[["star", "ring"]].sum(axis=1), 1.0, atol=1e-6)

"""What the export stage costs per model: the open_clip checkpoint and classifier, and the MLflow model.

Runs the export stage's two nodes and its MLflow dataset (``PyfuncClassifierDataset``, logging to a
temporary sqlite store) on randomly initialised models of the default architecture, alternately one
without a head (FLYP, StarFT, kl: the zero-shot classifier is computed from the text tower) and one
with a learned head (LP, FT, LP-FT). The first MLflow model of a process pays one-time costs
(MLflow's import and its scan of the installed packages), shown apart. Two clocks: wall time, and
this process's CPU time (on a CPU that other jobs share, wall time measures the scheduler too).

    python benchmarks/bench_export.py --models 4

A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from starft_pipeline.core.tensor_bundle import TensorBundle
from starft_pipeline.models.clip import ModelSpec, create_model, state_dict_copy
from starft_pipeline.models.heads import ClassifierHead, attach_head, weights_bundle

ARCHITECTURE = "starft-tiny-vit"
CLASSES = ["circle", "square", "triangle", "cross"]
TEMPLATES = ["a photo of a {c}.", "a {c} on a background.", "a drawing of a {c}."]
INDEX = {
    "finetune_dataset": "shapes",
    "datasets": {
        "shapes": {
            "class_names": CLASSES,
            "templates": TEMPLATES,
            "n_places": 1,
            "group_names": CLASSES,
            "train_group_counts": [1] * len(CLASSES),
        }
    },
}
TEACHER = {"spec": {"architecture": ARCHITECTURE, "pretrained": None}}


def timed(action: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = action()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def fine_tuned(seed: int, with_head: bool) -> TensorBundle:
    loaded = create_model(ModelSpec(ARCHITECTURE, init_seed=seed))
    if with_head:
        dim = loaded.model.text_projection.shape[-1]
        attach_head(
            loaded.model, ClassifierHead(torch.randn(len(CLASSES), dim), torch.zeros(len(CLASSES)), tuple(CLASSES))
        )
    return weights_bundle(state_dict_copy(loaded.model), "shapes", CLASSES, {"method": f"m{seed}"})


def example_image() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=4, help="models exported (alternately without and with a head)")
    args = parser.parse_args()

    import mlflow

    from starft_pipeline.pipelines.export.datasets import PyfuncClassifierDataset
    from starft_pipeline.pipelines.export.nodes import export_open_clip

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        with mlflow.start_run():
            for index in range(args.models):
                with_head = index % 2 == 1
                weights = fine_tuned(index, with_head)
                checkpoint, classifier = root / f"m{index}.safetensors", root / f"m{index}_classifier.safetensors"

                def export(
                    weights: TensorBundle = weights, checkpoint: Path = checkpoint, classifier: Path = classifier
                ) -> None:
                    towers, head = export_open_clip(weights, INDEX, TEACHER, {"device": "cpu"})
                    towers.save(checkpoint)
                    head.save(classifier)

                _, export_wall, export_cpu = timed(export)
                dataset = PyfuncClassifierDataset(
                    flavor="mlflow.pyfunc",
                    pyfunc_workflow="python_model",
                    save_args={
                        "name": f"m{index}",
                        "artifacts": {"checkpoint": str(checkpoint), "classifier": str(classifier)},
                    },
                )
                _, log_wall, log_cpu = timed(lambda dataset=dataset: dataset.save([example_image()]))
                rows.append(
                    {
                        "model": index,
                        "head": "learned" if with_head else "zero-shot",
                        "export_wall_s": export_wall,
                        "export_cpu_s": export_cpu,
                        "log_wall_s": log_wall,
                        "log_cpu_s": log_cpu,
                    }
                )
    table = pd.DataFrame(rows)
    print(f"torch threads: {torch.get_num_threads()}")
    print(table.to_string(index=False, float_format=lambda value: f"{value:.2f}"))
    later = table.iloc[1:]
    if len(later):
        print(
            f"per model after the first: export {statistics.median(later['export_wall_s']):.2f} s wall "
            f"({statistics.median(later['export_cpu_s']):.2f} s CPU), MLflow model {statistics.median(later['log_wall_s']):.2f} s wall "
            f"({statistics.median(later['log_cpu_s']):.2f} s CPU); first MLflow model {table['log_wall_s'].iloc[0]:.2f} s wall"
        )
        for clock in ("wall", "cpu"):
            per_model = statistics.median(later[f"export_{clock}_s"]) + statistics.median(later[f"log_{clock}_s"])
            first_extra = table[f"log_{clock}_s"].iloc[0] - statistics.median(later[f"log_{clock}_s"])
            print(f"the default's six methods: about {6 * per_model + first_extra:.1f} s {clock} time added to `full`")


if __name__ == "__main__":
    main()

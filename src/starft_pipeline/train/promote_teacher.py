"""Promote pretrained teacher weights into the package, after checking them against thresholds.

    python -m starft_pipeline.train.promote_teacher \
        --from data/06_models/pretrained/starft-tiny-vit-world-colours.safetensors \
        --to src/starft_pipeline/assets/weights/starft-tiny-vit-world-colours.safetensors

`kedro run --pipelines=pretrain` writes its weights under ``data/``; promotion into the tracked
package is this explicit step. It reads the zero-shot accuracies the pretrain node stored in the
weights file itself (so the check cannot be made against another run's report), refuses when any
checked concept is below ``--min-accuracy`` or the file is larger than ``--max-mb``, and otherwise
copies the file atomically (a crash leaves the old file or none, never half a file).

Plain Python, no Kedro (docs/miniature-world.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from safetensors import SafetensorError, safe_open

from starft_pipeline.core.io_utils import atomic_path

MIN_ACCURACY = 0.90  # the bar for a teacher of the miniature world
MAX_MB = 20.0


class PromotionRefused(ValueError):
    """The weights do not meet the thresholds; nothing was copied."""


def stored_accuracies(path: Path) -> dict[str, float]:
    """The ``zero_shot_accuracy`` the pretrain node wrote into the weights file's metadata."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `kedro run --pipelines=pretrain` (with its --env) first")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise PromotionRefused(f"{path} is not a readable safetensors file ({error})") from error
    if "zero_shot_accuracy" not in metadata:
        raise PromotionRefused(
            f"{path} has no zero_shot_accuracy in its metadata: only weights written by the pretrain "
            "pipeline (which measures them) can be promoted"
        )
    return {concept: float(value) for concept, value in json.loads(metadata["zero_shot_accuracy"]).items()}


def check_promotable(
    path: Path, min_accuracy: float = MIN_ACCURACY, concepts: Sequence[str] | None = None, max_mb: float = MAX_MB
) -> dict[str, float]:
    """The file's accuracies, or :class:`PromotionRefused` naming every threshold it misses.

    ``concepts`` defaults to every concept the file reports (objects, backgrounds, and colours when
    the captions named them).
    """
    accuracies = stored_accuracies(path)
    checked = list(concepts) if concepts else sorted(accuracies)
    problems = [
        f"{concept} not measured (the file reports {sorted(accuracies)})"
        for concept in checked
        if concept not in accuracies
    ]
    problems += [
        f"{concept} {accuracies[concept]:.1%} < {min_accuracy:.1%}"
        for concept in checked
        if concept in accuracies and accuracies[concept] < min_accuracy
    ]
    size_mb = path.stat().st_size / 1e6
    if size_mb > max_mb:
        problems.append(f"size {size_mb:.1f} MB > {max_mb:.1f} MB (store fp16)")
    if problems:
        raise PromotionRefused(f"refusing to promote {path}: " + "; ".join(problems) + ". Nothing was copied.")
    return {concept: accuracies[concept] for concept in checked}


def promote(
    source: Path | str,
    target: Path | str,
    min_accuracy: float = MIN_ACCURACY,
    concepts: Sequence[str] | None = None,
    max_mb: float = MAX_MB,
) -> dict[str, float]:
    """Check ``source`` (:func:`check_promotable`), then copy it atomically to ``target``; returns the checked accuracies."""
    source, target = Path(source), Path(target)
    accuracies = check_promotable(source, min_accuracy, concepts, max_mb)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return accuracies


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--from", dest="source", type=Path, required=True, help="weights written by the pretrain pipeline"
    )
    parser.add_argument("--to", dest="target", type=Path, required=True, help="where the package keeps them")
    parser.add_argument("--min-accuracy", type=float, default=MIN_ACCURACY, help=f"default {MIN_ACCURACY}")
    parser.add_argument("--concepts", nargs="+", default=None, help="concepts to check (default: all the file reports)")
    parser.add_argument("--max-mb", type=float, default=MAX_MB, help=f"largest file accepted (default {MAX_MB} MB)")
    args = parser.parse_args(argv)
    try:
        accuracies = promote(args.source, args.target, args.min_accuracy, args.concepts, args.max_mb)
    except (PromotionRefused, FileNotFoundError) as error:
        sys.exit(str(error))
    shown = ", ".join(f"{concept} {value:.1%}" for concept, value in accuracies.items())
    print(f"promoted {args.source} -> {args.target} ({shown})")


if __name__ == "__main__":
    main()

"""A CPU dress rehearsal of the ImageNet run under torchrun: ``conf/imagenet`` on an ImageNet-shaped
tree (benchmarks/make_imagenet_like.py's generator, 10 classes) with the tiny model, two processes
(gloo, loopback), class_names → descriptions → shards → teacher → finetune (every method, lp included,
a few steps) → evaluation → export, every stage after the shards reading the pre-resized shards.

The process group's timeout (``distributed.timeout_s``) is set SHORTER than a rank-0-only phase that
the test slows down: rank 0 sleeps in the descriptions node (where it alone would ask Claude) longer
than the timeout. The job finishing proves that rank 1 waited in no collective meanwhile (it would
have been killed); its log shows how long it waited for rank 0's result. The slowdown lives in a
``sitecustomize.py`` on the subprocesses' PYTHONPATH, not in the product code.

The rehearsal's parameters are one dict, :data:`OVERRIDES`, merged over ``conf/imagenet`` into an
environment of its own (``conf/rehearsal``); extend it there.
"""

from __future__ import annotations

import csv
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from starft_pipeline.data.imagenet_like import write_imagenet_like
from starft_pipeline.train.methods import METHODS
from tests.helpers import PROJECT_ROOT, copy_project, kedro_env

TIMEOUT_S = 8.0  # the process group's timeout: any collective waiting longer kills the job
RANK0_SLOWDOWN_S = 12.0  # rank 0's descriptions phase, made longer than the timeout
STAGES = "class_names,descriptions,shards,teacher,finetune,evaluation,export"
TREE = "data/01_raw/imagenet_like"
#: Every fine-tuning method: one epoch of a few steps on the CPU (40 training images, batch 16).
TINY_FINETUNE = {
    "epochs": 1,
    "batch_size": 16,
    "warmup_steps": 1,
    "num_workers": 0,
    "device": "cpu",
    "progress": False,
}
#: The rehearsal's parameters over conf/imagenet's (blocks merged key by key; datasets and
#: class_names replaced whole, as an environment replaces them).
OVERRIDES: dict[str, Any] = {
    "datasets": {"imagenet": {"format": "image_folder", "roots": {"train": f"{TREE}/train", "test": f"{TREE}/val"}}},
    "class_names": {
        "finetune_dataset": "imagenet",
        "datasets": {
            "imagenet": {
                "source": "folders",
                "class_map": f"{TREE}/class_map.csv",
                "templates": "simple",
                "places": {0: "any background"},
                "convention": "generic",
            }
        },
    },
    "descriptions": {"provider": "offline", "confounder_types": ["background"]},
    "teacher": {
        "model": {"architecture": "starft-tiny-vit", "pretrained": None, "init_seed": 0},
        "device": "cpu",
        "batch_size": 64,
        "num_workers": 0,
        "work_dir": None,
    },
    **{method: {"finetune": TINY_FINETUNE} for method in METHODS},
    "evaluation": {
        "device": "cpu",
        "num_workers": 0,
        "splits": ["test"],
        "bootstrap": {"n_resamples": 20},
        "wise_ft": {"alphas": [0.0, 1.0], "splits": ["test"]},
    },
    "export": {"device": "cpu"},
    # conf/imagenet's shards folder; several tar files per split, so that the two ranks share the writing
    "shards": {"num_workers": 1, "rows_per_shard": 16},
    "distributed": {"timeout_s": TIMEOUT_S},
}
#: Put first on the subprocesses' PYTHONPATH: rank 0 sleeps before building the descriptions document.
SITECUSTOMIZE = textwrap.dedent(
    f"""
    import os, time

    if os.environ.get("RANK") == "0" and os.environ.get("WORLD_SIZE") == "2":
        import starft_pipeline.pipelines.descriptions.nodes as nodes

        _build = nodes.descriptions_document

        def slowed(*args, **kwargs):
            time.sleep({RANK0_SLOWDOWN_S})
            return _build(*args, **kwargs)

        nodes.descriptions_document = slowed
    """
)
RECEIVED = re.compile(r"rank 1: rank 0's generate_descriptions received after ([\d.]+)s")


def _merged(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: _merged(base.get(key), value) for key, value in override.items()}}
    return override


def rehearsal_env(project: Path, overrides: dict[str, Any]) -> str:
    """``conf/rehearsal``: conf/imagenet's parameter files with ``overrides`` merged in (file by file,
    so no block is declared twice), the blocks conf/imagenet lacks in a file of their own."""
    target = project / "conf" / "rehearsal"
    target.mkdir()
    left = dict(overrides)
    for source in sorted((project / "conf" / "imagenet").glob("*.yml")):
        blocks = yaml.safe_load(source.read_text()) or {}
        for name in [name for name in blocks if name in left]:
            replaced = name in ("datasets", "class_names")
            override = left.pop(name)
            blocks[name] = override if replaced else _merged(blocks[name], override)
        (target / source.name).write_text(yaml.safe_dump(blocks, sort_keys=False))
    (target / "parameters_rehearsal.yml").write_text(yaml.safe_dump(left, sort_keys=False))
    return "rehearsal"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _create_tracking_store(project: Path) -> None:
    """The MLflow SQLite store, created before the ranks start: every rank's MLflow client migrates a
    missing store on start-up, and two doing it at once collide (docs/data-at-scale.md)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}").search_experiments()


def _write_tree(project: Path) -> None:
    root = project / TREE
    write_imagenet_like(root, train_per_class=4, val_per_class=2, n_classes=10)
    folders = sorted(path.name for path in (root / "train").iterdir())
    with (root / "class_map.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([("folder", "name"), *((f, f"thing {i}") for i, f in enumerate(folders))])


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory) -> tuple[Path, list[str], float]:
    root = tmp_path_factory.mktemp("rehearsal")
    project = copy_project(root / "project")
    _write_tree(project)
    _create_tracking_store(project)
    env_name = rehearsal_env(project, OVERRIDES)
    (root / "site").mkdir()
    (root / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = kedro_env() | {
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "lo",
        "PYTHONPATH": f"{root / 'site'}:{PROJECT_ROOT / 'src'}",
    }
    command = [
        str(Path(sys.executable).with_name("torchrun")),
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "kedro",
        "run",
        f"--env={env_name}",
        f"--pipelines={STAGES}",
    ]
    start = time.monotonic()
    completed = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    wall_s = time.monotonic() - start
    log = completed.stdout + completed.stderr
    assert completed.returncode == 0, log[-6000:]
    return project, log.splitlines(), wall_s


@pytest.mark.slow
def test_rank_one_waits_for_rank_zeros_long_phase_outside_any_collective(rehearsal) -> None:
    _, lines, _ = rehearsal
    waits = [float(match.group(1)) for line in lines for match in [RECEIVED.search(line)] if match]
    assert waits, "\n".join(lines[-80:])
    # Rank 1 waited longer than the process group's timeout, and the job lived: it polled, in no collective.
    assert waits[0] > TIMEOUT_S
    assert any("collectives time out after 8s: distributed.timeout_s" in line for line in lines)


@pytest.mark.slow
def test_the_run_reaches_export_with_every_stage_written_once(rehearsal) -> None:
    project, lines, _ = rehearsal
    data = project / "data"
    for method in METHODS:
        assert (data / f"06_models/{method}.safetensors").is_file(), method
    assert (data / "06_models/lp_linear_probe.safetensors").is_file()
    assert (data / "08_reporting/results.csv").is_file()
    assert any((data / "06_models/open_clip").glob("*.safetensors"))  # the export stage's models
    # every rank fitted the probe (none waited for another meanwhile), both on the same C
    fits = [line for line in lines if "linear probe C=0.316" in line]
    assert len(fits) == 2, fits


@pytest.mark.slow
def test_only_rank_zero_opens_an_mlflow_run(rehearsal) -> None:
    from mlflow.tracking import MlflowClient

    project, _, _ = rehearsal
    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]
    assert len(runs) == 1, [run.info.run_name for run in runs]


@pytest.mark.slow
def test_the_stages_after_the_shards_read_them(rehearsal) -> None:
    import json

    project, lines, _ = rehearsal
    folder = project / "data/05_model_input/shards/imagenet/train"
    index = json.loads((folder / "index.json").read_text())
    assert len(list(folder.glob("*.tar"))) >= 2 and index, "the two ranks share several tar files"
    teacher_model = json.loads((project / "data/04_feature/teacher_model.json").read_text())
    assert teacher_model["shards"]["folder"] == "data/05_model_input/shards"  # what finetune and evaluation read
    assert any("train images:" in line and "data/05_model_input/shards" in line for line in lines), lines[-40:]

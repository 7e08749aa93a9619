"""finetune stage: a namespaced pipeline per method of ``methods.METHOD_SPECS``, so kedro viz shows them side by side.

LP fits a head on the cached teacher features (seconds, towers unchanged; once per run, on rank 0
under torchrun); LP-FT fine-tunes from that same head (``lp_linear_probe``), FT from the zero-shot head; FLYP, StarFT (`star`) and its plain-KL variant (`kl`) train both
towers contrastively. `kedro run --namespaces=<method>` runs one of them.
"""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.pipelines.finetune.nodes import (
    StageInputs,
    finetune_method,
    fit_linear_probe,
    linear_probe_weights,
    loss_curve_metrics,
)
from starft_pipeline.train.methods import METHOD_SPECS, MethodSpec, method_names, method_spec

#: The datasets every method reads, passed to the fitting nodes by name (``StageInputs``).
SHARED_INPUTS = tuple(StageInputs.__annotations__)


#: The method whose namespace fits the linear probe; the other methods that start from it (LP-FT) read
#: its probe, so the probe is fitted once per run. The dataset's name has no dot: a namespaced name read
#: from another namespace would be flagged by Kedro as a dotted dataset name.
PROBE_METHOD = next(spec.name for spec in METHOD_SPECS if spec.fits_probe)
PROBE = f"{PROBE_METHOD}_linear_probe"


def _method_nodes(spec: MethodSpec) -> list[Node]:
    """The nodes that produce one method's ``weights`` and ``history`` (and LP's probe)."""
    inputs = {"finetune_params": "params:finetune", **{name: name for name in SHARED_INPUTS}}
    if spec.head_init != "linear_probe":
        return [Node(finetune_method, inputs, ["weights", "history"], name="finetune")]
    if spec.fits_probe:  # LP: the probe is the method
        probe = Node(fit_linear_probe, inputs, "linear_probe", name="fit_linear_probe")
        weights = ["linear_probe", "teacher_model", "params:finetune"]
        return [probe, Node(linear_probe_weights, weights, ["weights", "history"], name="linear_probe_weights")]
    return [Node(finetune_method, inputs | {"linear_probe": "linear_probe"}, ["weights", "history"], name="finetune")]


def method_pipeline(method: str) -> Pipeline:
    spec = method_spec(method)
    template = Pipeline(
        [*_method_nodes(spec), Node(loss_curve_metrics, "history", "loss_curve", name="log_loss_curve")]
    )
    shared = {name: name for name in SHARED_INPUTS}
    probe = {"linear_probe": PROBE} if spec.head_init == "linear_probe" else {}
    if spec.fits_probe:
        return Pipeline(template, namespace=method, inputs=shared, outputs=probe, tags=["finetune", method])
    return Pipeline(template, namespace=method, inputs=shared | probe, tags=["finetune", method])


def create_pipeline(**kwargs) -> Pipeline:
    return sum((method_pipeline(method) for method in method_names()), Pipeline([]))

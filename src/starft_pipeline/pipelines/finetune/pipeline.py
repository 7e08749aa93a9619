"""finetune stage: a namespaced pipeline per method, so kedro viz shows them side by side.

LP fits a head on the cached teacher features (seconds, towers unchanged); LP-FT fine-tunes from that
head, FT from the zero-shot head; FLYP, StarFT (`star`) and its plain-KL variant (`kl`) train both
towers contrastively. `kedro run --namespaces=<method>` runs one of them.
"""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.training import HEAD_INIT, METHODS, STEP_LOSSES

from .nodes import finetune_method, fit_linear_probe, linear_probe_weights, loss_curve_metrics

SHARED_INPUTS = ("dataset_metadata", "dataset_index", "descriptions", "teacher_model", "teacher_cache")


def _method_nodes(method: str) -> list[Node]:
    """The nodes that produce one method's ``weights`` and ``history``."""
    inputs = [*SHARED_INPUTS, "params:finetune"]
    if HEAD_INIT.get(method) != "linear_probe":
        return [Node(finetune_method, inputs, ["weights", "history"], name="finetune")]
    probe = Node(fit_linear_probe, inputs, "linear_probe", name="fit_linear_probe")
    if method not in STEP_LOSSES:  # LP: the probe is the method
        weights = ["linear_probe", "teacher_model", "params:finetune"]
        return [probe, Node(linear_probe_weights, weights, ["weights", "history"], name="linear_probe_weights")]
    return [probe, Node(finetune_method, [*inputs, "linear_probe"], ["weights", "history"], name="finetune")]


def method_pipeline(method: str) -> Pipeline:
    template = Pipeline(
        [*_method_nodes(method), Node(loss_curve_metrics, "history", "loss_curve", name="log_loss_curve")]
    )
    return Pipeline(template, namespace=method, inputs=set(SHARED_INPUTS), tags=["finetune", method])


def create_pipeline(**kwargs) -> Pipeline:
    return sum((method_pipeline(method) for method in METHODS), Pipeline([]))

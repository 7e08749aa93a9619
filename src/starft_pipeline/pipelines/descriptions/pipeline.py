"""descriptions stage: class names → spuriosity-injected descriptions file."""

from kedro.pipeline import Node, Pipeline

from starft_pipeline.pipelines.descriptions.nodes import generate_descriptions


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                generate_descriptions,
                ["dataset_index", "spurious_template_pools", "params:descriptions"],
                ["descriptions", "descriptions_usage"],
                name="generate_descriptions",
            )
        ],
        tags="descriptions",
    )

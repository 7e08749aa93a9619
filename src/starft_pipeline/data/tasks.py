"""What an evaluation task is: its classes, prompt templates, group layout and reporting convention.

Shared by the data index (which builds tasks from the metadata), the models (prompts) and the
evaluation (which scores predictions on them), so it lives with the data. No Kedro here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

#: How a data set's headline numbers are reported (evaluate.metrics.HEADLINE_METRIC; docs/evaluation-conventions.md).
Convention = Literal["waterbirds", "celeba", "generic"]
CONVENTIONS: tuple[str, ...] = get_args(Convention)


@dataclass(frozen=True)
class EvalTask:
    """One evaluation data set: its class names, prompt templates and group layout."""

    name: str
    class_names: tuple[str, ...]
    templates: tuple[str, ...]
    n_places: int
    group_names: tuple[str, ...]
    train_group_counts: tuple[int, ...]

    @property
    def n_groups(self) -> int:
        return len(self.class_names) * self.n_places


def default_group_names(class_names: Sequence[str], place_names: Sequence[str]) -> tuple[str, ...]:
    """ "<class> on <place>" for g = y · n_places + place."""
    return tuple(f"{name} on {place}" for name in class_names for place in place_names)


def fill_template(template: str, class_name: str) -> str:
    """Fill a prompt template's class slot; templates use ``{c}`` (or the OpenAI style ``{}``)."""
    if "{c}" in template:
        return template.replace("{c}", class_name)
    if "{}" in template:
        return template.replace("{}", class_name)
    raise ValueError(f"template {template!r} has no class slot: write {{c}} where the class name goes")

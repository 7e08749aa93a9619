"""Spuriosity-injected descriptions: the offline template generator and the reviewable file format.

The descriptions file maps confounder type → class name → texts. Every stage after this one reads
that file only, whether an LLM or the template pools wrote it, so a user can review, edit and pin it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from starft_pipeline.core.io_utils import fingerprint
from starft_pipeline.data.tasks import fill_template

DescriptionTable = dict[str, dict[str, list[str]]]  # confounder type -> class name -> texts
FORMAT_VERSION = 1


class DescriptionsError(ValueError):
    """A descriptions file or pool that cannot be used; the message says which entry."""


def expand_pools(
    class_names: Sequence[str], pools: Mapping[str, Sequence[str]], confounder_types: Sequence[str]
) -> DescriptionTable:
    """Fill every template of each chosen pool with every class name."""
    unknown = [kind for kind in confounder_types if kind not in pools]
    if unknown:
        raise DescriptionsError(f"confounder type(s) {unknown} have no template pool; available pools: {sorted(pools)}")
    return {
        kind: {name: [fill_template(template, name) for template in pools[kind]] for name in class_names}
        for kind in confounder_types
    }


def descriptions_document(
    table: DescriptionTable, class_names: Sequence[str], provider: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """The reviewable JSON document written by the descriptions stage."""
    return {
        "format_version": FORMAT_VERSION,
        "provider": provider,
        "settings": dict(settings),
        "classes": list(class_names),
        "fingerprint": fingerprint(table),
        "descriptions": table,
    }


@dataclass(frozen=True)
class DescriptionPool:
    """A flat pool of description texts with the class index of each, for the regulariser."""

    texts: tuple[str, ...]
    labels: tuple[int, ...]
    kinds: tuple[str, ...]

    def select(self, confounder_types: Sequence[str]) -> DescriptionPool:
        """The sub-pool of the given confounder types (a method may use fewer than the cache holds)."""
        missing = sorted(set(confounder_types) - set(self.kinds))
        if missing:
            raise DescriptionsError(
                f"confounder type(s) {missing} are not in the descriptions (have {sorted(set(self.kinds))}); "
                "add them to descriptions.confounder_types and rerun the descriptions and teacher stages"
            )
        keep = self.positions_of(confounder_types)
        return DescriptionPool(
            tuple(self.texts[i] for i in keep), tuple(self.labels[i] for i in keep), tuple(self.kinds[i] for i in keep)
        )

    def positions_of(self, confounder_types: Sequence[str]) -> list[int]:
        """Indices of this pool's entries of the given types (rows of the cached description features)."""
        return [i for i, kind in enumerate(self.kinds) if kind in confounder_types]

    def indices_by_class(self, n_classes: int) -> list[list[int]]:
        by_class: list[list[int]] = [[] for _ in range(n_classes)]
        for index, label in enumerate(self.labels):
            by_class[label].append(index)
        return by_class


def flatten_descriptions(
    document: Mapping[str, Any], class_names: Sequence[str], confounder_types: Sequence[str] | None = None
) -> DescriptionPool:
    """Collect the texts of the chosen confounder types (all by default), checking every class has one."""
    table = document.get("descriptions")
    if not isinstance(table, Mapping):
        raise DescriptionsError("descriptions file has no 'descriptions' mapping; regenerate or fix it")
    texts: list[str] = []
    labels: list[int] = []
    kinds: list[str] = []
    for kind in confounder_types if confounder_types is not None else sorted(table):
        if kind not in table:
            raise DescriptionsError(
                f"descriptions file has no confounder type {kind!r} (has {sorted(table)}); "
                "change the pool parameter or regenerate the descriptions"
            )
        for label, name in enumerate(class_names):
            class_texts = table[kind].get(name, [])
            if not class_texts:
                raise DescriptionsError(
                    f"descriptions file has no {kind!r} descriptions for class {name!r}; "
                    "every class the model is fine-tuned on needs at least one"
                )
            for text in class_texts:
                if not isinstance(text, str) or not text.strip():
                    raise DescriptionsError(f"descriptions[{kind!r}][{name!r}] holds an empty or non-text entry")
                texts.append(text)
                labels.append(label)
                kinds.append(kind)
    return DescriptionPool(texts=tuple(texts), labels=tuple(labels), kinds=tuple(kinds))

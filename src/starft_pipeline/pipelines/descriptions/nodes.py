"""descriptions stage: spuriosity-injected descriptions of the fine-tuning classes.

``provider: offline`` fills the template pools under conf/; ``provider: anthropic`` asks Claude
(cached per class and confounder type). A ``pinned_file`` is used as is, so a reviewed, hand-edited
file is never regenerated.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from starft_pipeline.core.distributed import on_main_rank
from starft_pipeline.data.dataset_index import dataset_info
from starft_pipeline.data.descriptions import (
    DescriptionsError,
    descriptions_document,
    expand_pools,
    flatten_descriptions,
)

logger = logging.getLogger(__name__)


def _load_pinned(path: Path, class_names: list[str], confounder_types: list[str]) -> dict[str, Any]:
    if not path.is_file():
        raise DescriptionsError(f"descriptions.pinned_file {path} does not exist; fix the path or set it to null")
    try:
        document = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise DescriptionsError(f"descriptions.pinned_file {path} is not valid JSON/YAML: {error}") from error
    flatten_descriptions(document, class_names, confounder_types)  # every class present, no empty text
    logger.info("descriptions: using the pinned file %s as is", path)
    return {**document, "provider": f"pinned:{path}"}


def _credentials(path: str | None) -> dict[str, Any] | None:
    if not path or not Path(path).is_file():
        return None
    return yaml.safe_load(Path(path).read_text()) or {}


def _from_anthropic(
    class_names: list[str], confounder_types: list[str], settings: dict[str, Any]
) -> tuple[dict, dict[str, float], list[dict[str, Any]]]:
    """Ask Claude (cached per class × confounder type); the key comes from the env or conf/local only."""
    from starft_pipeline.llm import LLMSettings, generate_descriptions, resolve_api_key

    llm_settings = LLMSettings.from_params({**settings["anthropic"], "confounder_types": confounder_types})
    result = generate_descriptions(
        class_names,
        llm_settings,
        cache_dir=Path(settings["cache_dir"]),
        api_key=resolve_api_key(_credentials(settings.get("credentials_file"))),
        logger=logger,
    )
    review = [
        {key: record.get(key) for key in ("class_name", "confounder_type", "key", "cached", "model", "created_at")}
        for record in result.records
    ]
    return result.descriptions, result.usage, review


@on_main_rank  # under torchrun: only rank 0 asks Claude; the others receive its document
def generate_descriptions(
    dataset_index: dict[str, Any], spurious_template_pools: dict[str, list[str]], descriptions: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """The reviewable descriptions document and the generation's usage figures (for MLflow)."""
    class_names = dataset_info(dataset_index, dataset_index["finetune_dataset"])["class_names"]
    confounder_types = list(descriptions["confounder_types"])
    if descriptions.get("pinned_file"):
        return _load_pinned(Path(descriptions["pinned_file"]), class_names, confounder_types), {}
    provider = descriptions["provider"]
    if provider == "offline":
        table = expand_pools(class_names, spurious_template_pools, confounder_types)
        usage: dict[str, float] = {}
        settings: dict[str, Any] = {"confounder_types": confounder_types}
    elif provider == "anthropic":
        table, usage, review = _from_anthropic(class_names, confounder_types, descriptions)
        settings = {
            "confounder_types": confounder_types,
            "anthropic": dict(descriptions["anthropic"]),
            "records": review,
        }
    else:
        raise DescriptionsError(f"descriptions.provider is {provider!r}; use 'offline' or 'anthropic'")
    document = descriptions_document(table, class_names, provider, settings)
    counts = {kind: sum(len(texts) for texts in per_class.values()) for kind, per_class in table.items()}
    logger.info("descriptions (%s): %s", provider, counts)
    return document, {f"descriptions.{key}": {"value": float(value), "step": 0} for key, value in usage.items()}

"""Typed parameters: one Pydantic model per parameters block, checked before any node runs.

Blocks that a core dataclass reads (``<method>.finetune`` → :class:`~starft_pipeline.train.finetune.FinetuneConfig`,
``teacher.model`` → :class:`~starft_pipeline.models.clip.ModelSpec`, ``pretrain``, ``evaluation``
(:class:`~starft_pipeline.evaluate.config.EvaluationConfig`, its ``bootstrap`` and ``wise_ft``),
the data checks of ``datasets.<name>``) get a model *generated from that dataclass*: its fields, types,
defaults and the ranges and checks its fields carry (:func:`starft_pipeline.core.configs.bounded`), so a
field or a range added there is accepted and checked here at once, plus the dataclass's cross-field
checks (its ``from_params`` / ``__post_init__``). Scalars are strict (``lr: "1e-4"``
is a string, not a number: YAML 1.1 reads ``1e-4`` without a dot that way) and unknown keys are errors.

:func:`parameter_errors` returns every problem as ``<full.key.path>: <message>`` (an unknown key
with the closest known one); :func:`precondition_errors` what valid parameters say is missing (the
teacher's weights). The Kedro hook (:mod:`starft_pipeline.hooks`) raises them before the run starts. Nodes keep receiving plain dicts.
No Kedro here.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    Strict,
    ValidationError,
    create_model,
    model_validator,
)

from starft_pipeline.core.configs import check_device, field_bounds, field_checks
from starft_pipeline.core.distributed import ProcessGroupConfig
from starft_pipeline.core.precision import Precision
from starft_pipeline.data.formats import DataFormat
from starft_pipeline.data.metadata import DataChecks
from starft_pipeline.data.shards import DEFAULT_ROWS_PER_SHARD
from starft_pipeline.data.tasks import CONVENTIONS
from starft_pipeline.evaluate.config import EvaluationConfig, SplitName, WiseFtConfig
from starft_pipeline.evaluate.results import BootstrapSettings
from starft_pipeline.llm import LLMSettings
from starft_pipeline.models.clip import ModelSpec
from starft_pipeline.models.teacher import DEFAULT_PART_ROWS, DEFAULT_WORK_DIR
from starft_pipeline.train.checkpointing import CheckpointConfig
from starft_pipeline.train.finetune import FinetuneConfig
from starft_pipeline.train.linear_probe import LinearProbeConfig
from starft_pipeline.train.methods import check_method
from starft_pipeline.train.pretraining import PretrainConfig

STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)
_SCALARS = (int, float, bool, str)
#: Parameter names that would carry a credential into MLflow's parameter log.
_SECRET_NAME = re.compile(r"^(.*_)?(api_?key|secret|password|passwd|token|access_token|auth_token)$", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"^sk-ant-")


class ParameterError(ValueError):
    """Parameters that cannot be used; the message lists every problem with its full key path."""


def strict(annotation: Any) -> Any:
    """``annotation`` with every int, float, bool and str inside it made strict (no coercion from text)."""
    if annotation in _SCALARS:
        return Annotated[annotation, Strict()]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal or not args:
        return annotation
    if origin is Annotated:
        parts = (strict(args[0]), *annotation.__metadata__)  # a variable: mypy reads X[(a, *b)] as 3.11's X[a, *b]
        return Annotated[parts]
    inner = tuple(arg if arg is Ellipsis else strict(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return Union[inner]  # noqa: UP007 (a runtime tuple of types: `X | Y` cannot be built from it)
    return origin[inner if len(inner) > 1 else inner[0]]


def _one_of(allowed: Iterable[str]) -> AfterValidator:
    allowed = tuple(allowed)

    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"must be one of {list(allowed)}, got {value!r}")
        return value

    return AfterValidator(check)


Device = Annotated[str, Strict(), AfterValidator(check_device)]
Alpha = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
MethodName = Annotated[str, Strict(), AfterValidator(check_method)]  # a row of methods.METHOD_SPECS, read at call time


def model_from_dataclass(
    cls: type,
    extra_fields: Mapping[str, tuple[Any, Any]] = {},
    exclude: Iterable[str] = (),
    check: Callable[[dict[str, Any]], Any] | None = None,
    base: type[BaseModel] | None = None,
) -> type[BaseModel]:
    """A strict Pydantic model with ``cls``'s fields, types, defaults, ranges and field checks.

    A field's range (``bounded(3, ge=1)``) becomes ``Field(ge=1)``, its check an ``AfterValidator``
    (both reported under the field's key); ``extra_fields`` adds keys the node reads besides the
    dataclass; ``check`` runs on the validated values (e.g. the dataclass's own ``from_params``: its
    cross-field rules), its ValueError reported under the block's path.
    """
    hints = get_type_hints(cls)
    constraints = field_constraints(cls)
    definitions: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        annotation = strict(hints[field.name])
        if field.name in constraints:
            parts = (annotation, *constraints[field.name])
            annotation = Annotated[parts]
        if field.default is not dataclasses.MISSING:
            definitions[field.name] = (annotation, field.default)
        elif field.default_factory is not dataclasses.MISSING:
            definitions[field.name] = (annotation, Field(default_factory=field.default_factory))
        else:
            definitions[field.name] = (annotation, ...)
    definitions.update(extra_fields)
    validators = {"_dataclass_check": _after_check(check)} if check else {}
    options: dict[str, Any] = {"__base__": base} if base else {"__config__": STRICT}
    return create_model(f"{cls.__name__}Params", **options, __validators__=validators, **definitions)


def field_constraints(cls: type) -> dict[str, list[Any]]:
    """The Pydantic metadata of each field of ``cls`` that carries a range or a check (configs.bounded)."""
    constraints: dict[str, list[Any]] = {}
    for name, bounds in field_bounds(cls).items():
        if bounds:
            constraints.setdefault(name, []).append(
                Field(ge=bounds.get("ge"), gt=bounds.get("gt"), le=bounds.get("le"), lt=bounds.get("lt"))
            )
    for name, check in field_checks(cls).items():
        constraints.setdefault(name, []).append(AfterValidator(_unless_none(check)))
    return constraints


def _unless_none(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``check`` that lets None pass, as the dataclass's own ``check_fields`` does (an optional field)."""
    return lambda value: value if value is None else check(value)


def _after_check(check: Callable[[dict[str, Any]], Any]) -> Any:
    def run(model: BaseModel) -> BaseModel:
        check(model.model_dump())
        return model

    return model_validator(mode="after")(run)


# --- class_names ------------------------------------------------------------------------------------


class _DataChecksBase(BaseModel):
    model_config = STRICT


_DataChecksParams = model_from_dataclass(DataChecks, exclude=("source",), base=_DataChecksBase)


class DatasetParams(_DataChecksParams):  # type: ignore[misc, valid-type]
    """``datasets.<name>``: where a data set is and how its rows and images are checked."""

    root: Annotated[str, Strict()] | None = None
    generate: Annotated[str, Strict()] | dict[str, Any] | None = None
    format: DataFormat = "release"
    roots: dict[SplitName, Annotated[str, Strict()]] | None = None
    optional: Annotated[bool, Strict()] = False

    @model_validator(mode="after")
    def _location(self) -> DatasetParams:
        if self.format == "release" and not self.root:
            raise ValueError("format release needs `root` (the folder holding metadata.csv)")
        if self.format == "image_folder" and not self.roots:
            raise ValueError("format image_folder needs `roots: {split: folder}`")
        self._check_generate()
        return self

    def _check_generate(self) -> None:
        from starft_pipeline.data.synthetic import DEFAULT_SPECS, GroupShiftSpec

        if isinstance(self.generate, str) and self.generate not in DEFAULT_SPECS:
            raise ValueError(
                f"generate is {self.generate!r}; use one of {sorted(DEFAULT_SPECS)}, a spec mapping or null"
            )
        if isinstance(self.generate, dict):
            GroupShiftSpec.from_dict(self.generate)


DatasetsParams = RootModel[dict[str, DatasetParams]]


class ClassNamesDatasetParams(BaseModel):
    """``class_names.datasets.<name>``: where the class names come from and how the data set is reported."""

    model_config = STRICT
    source: Literal["manifest", "mapping", "image_folder", "folders", "csv"] = "mapping"
    templates: Annotated[str, Strict()] | list[Annotated[str, Strict()]] = "simple"
    convention: Annotated[str, Strict(), _one_of(CONVENTIONS)] = "generic"
    mapping: dict[int | str, Annotated[str, Strict()]] | None = None
    places: dict[int | str, Annotated[str, Strict()]] | None = None
    image_folder: Annotated[str, Strict()] | None = None
    class_map: Annotated[str, Strict()] | None = None
    csv: Annotated[str, Strict()] | None = None
    name_column: Annotated[str, Strict()] | None = None
    label_column: Annotated[str, Strict()] | None = None

    @model_validator(mode="after")
    def _source_inputs(self) -> ClassNamesDatasetParams:
        needed = {"mapping": ("mapping",), "image_folder": ("image_folder",), "csv": ("csv", "name_column")}
        missing = [key for key in needed.get(self.source, ()) if getattr(self, key) is None]
        if missing:
            raise ValueError(f"source {self.source} needs {missing}")
        return self


class ClassNamesParams(BaseModel):
    model_config = STRICT
    finetune_dataset: Annotated[str, Strict()]
    datasets: dict[str, ClassNamesDatasetParams]

    @model_validator(mode="after")
    def _finetune_dataset_listed(self) -> ClassNamesParams:
        if self.finetune_dataset not in self.datasets:
            raise ValueError(
                f"finetune_dataset is {self.finetune_dataset!r}, which has no entry under datasets ({sorted(self.datasets)})"
            )
        return self


# --- descriptions, teacher ----------------------------------------------------------------------------


class DescriptionsParams(BaseModel):
    """``descriptions``; the keys the node indexes directly are required (no silent default)."""

    model_config = STRICT
    provider: Literal["offline", "anthropic"]
    confounder_types: list[Annotated[str, Strict(), Field(min_length=1)]] = Field(min_length=1)
    pinned_file: Annotated[str, Strict()] | None = None
    cache_dir: Annotated[str, Strict()]
    credentials_file: Annotated[str, Strict()] | None = None
    anthropic: LLMSettings | None = None

    @model_validator(mode="after")
    def _anthropic_settings(self) -> DescriptionsParams:
        if self.provider == "anthropic" and self.anthropic is None:
            raise ValueError("provider anthropic needs the `anthropic` block (model, max_tokens, …)")
        return self


TeacherModelParams = model_from_dataclass(ModelSpec)


class TeacherParams(BaseModel):
    model_config = STRICT
    model: TeacherModelParams  # type: ignore[valid-type]
    batch_size: Annotated[int, Strict(), Field(ge=1)] = 256
    device: Device = "auto"
    work_dir: Annotated[str, Strict()] | None = DEFAULT_WORK_DIR
    num_workers: Annotated[int, Strict(), Field(ge=0)] = 0
    precision: Precision = "auto"
    part_rows: Annotated[int, Strict(), Field(ge=1)] = DEFAULT_PART_ROWS


class ShardsParams(BaseModel):
    """``shards``: where the shards stage writes every split as pre-resized JPEG shards, read by the
    teacher, fine-tuning and evaluation (null: they decode the original files)."""

    model_config = STRICT
    folder: Annotated[str, Strict()] | None = None
    decode: Literal["cpu", "gpu"] = "cpu"
    num_workers: Annotated[int, Strict(), Field(ge=0)] = 0
    rows_per_shard: Annotated[int, Strict(), Field(ge=1)] = DEFAULT_ROWS_PER_SHARD


# --- finetune -----------------------------------------------------------------------------------------

LinearProbeParams = model_from_dataclass(LinearProbeConfig, check=LinearProbeConfig.from_params)
CheckpointParams = model_from_dataclass(CheckpointConfig)
#: The finetune keys read besides FinetuneConfig's (the finetune nodes' RUNTIME_KEYS).
FINETUNE_RUNTIME_FIELDS = {
    "device": (Device, "auto"),
    "linear_probe": (LinearProbeParams | None, None),
    "checkpoint": (CheckpointParams | None, None),
}
FinetuneParams = model_from_dataclass(
    FinetuneConfig,
    extra_fields=FINETUNE_RUNTIME_FIELDS,
    check=lambda values: FinetuneConfig.from_params(values, exclude=tuple(FINETUNE_RUNTIME_FIELDS)),
)


# --- evaluation, reporting, pretrain ---------------------------------------------------------------

BootstrapParams = model_from_dataclass(BootstrapSettings)
WiseFtParams = model_from_dataclass(WiseFtConfig)
#: The nested blocks of ``evaluation``: their own models, so an error names the nested key.
EVALUATION_NESTED_FIELDS = {
    "bootstrap": (BootstrapParams, Field(default_factory=BootstrapParams)),
    "wise_ft": (WiseFtParams, Field(default_factory=WiseFtParams)),
}
EvaluationParams = model_from_dataclass(
    EvaluationConfig, extra_fields=EVALUATION_NESTED_FIELDS, exclude=tuple(EVALUATION_NESTED_FIELDS)
)


class ReportingParams(BaseModel):
    model_config = STRICT
    comparison_split: SplitName = "test"
    wise_ft_annotate_alphas: list[Alpha] | None = None
    training_terms: list[Annotated[str, Strict()]] = ["loss"]
    training_smooth: Annotated[int, Strict(), Field(ge=1)] | None = None
    frontier_reference: MethodName = "flyp"  # whose WiSE-FT curve the frontier compares every model with
    frontier_split: SplitName = "test"  # the split of the frontier's ID and OOD metrics


PretrainParams = model_from_dataclass(PretrainConfig, check=PretrainConfig.from_params)


class ExportParams(BaseModel):
    model_config = STRICT
    device: Device = "auto"
    example_images: Annotated[int, Strict(), Field(ge=1)] = 2


class PredictParams(BaseModel):
    model_config = STRICT
    model: Annotated[str, Strict(), Field(min_length=1)] = "star"
    images: Annotated[str, Strict()] | None = None
    dataset: Annotated[str, Strict()] | None = None
    models_dir: Annotated[str, Strict()] = "data/06_models"
    batch_size: Annotated[int, Strict(), Field(ge=1)] = 256
    device: Device = "auto"


DistributedParams = model_from_dataclass(ProcessGroupConfig)


#: The model of each top-level block a node (or a hook: ``distributed``) reads (``params:<block>``).
BLOCK_MODELS: dict[str, type[BaseModel]] = {
    "datasets": DatasetsParams,
    "class_names": ClassNamesParams,
    "descriptions": DescriptionsParams,
    "shards": ShardsParams,
    "teacher": TeacherParams,
    "evaluation": EvaluationParams,
    "reporting": ReportingParams,
    "pretrain": PretrainParams,
    "export": ExportParams,
    "predict": PredictParams,
    "distributed": DistributedParams,
}
#: The model of a namespaced block by its last key (``params:<method>.finetune``).
NAMESPACED_MODELS: dict[str, type[BaseModel]] = {"finetune": FinetuneParams}


def model_for(path: str) -> type[BaseModel] | None:
    """The model of the parameters block at ``path`` (e.g. ``star.finetune``), or None when none is declared."""
    head, _, last = path.rpartition(".")
    return NAMESPACED_MODELS.get(last) if head else BLOCK_MODELS.get(path)


_MISSING = object()


def _lookup(params: Mapping[str, Any], path: str) -> Any:
    node: Any = params
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _model_in(annotation: Any) -> Any:
    """The model inside ``X | None`` (or ``annotation`` itself)."""
    options = [arg for arg in get_args(annotation) if _is_model(arg)]
    return options[0] if options else annotation


def _submodel(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The (sub)model at ``loc``, or None when ``loc`` leaves the model tree."""
    current: Any = model
    for part in loc:
        if _is_model(current) and issubclass(current, RootModel):
            current = current.model_fields["root"].annotation
        if get_origin(current) is dict:
            current = get_args(current)[1]
            continue
        if not _is_model(current) or part not in current.model_fields:
            return None
        current = _model_in(current.model_fields[part].annotation)
    return current if _is_model(current) else None


def _nested_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every key the model accepts, nested ones dotted (``anthropic.base_url``); not below a free-form mapping."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(f"{prefix}{name}")
        inner = _model_in(field.annotation)
        if _is_model(inner) and not issubclass(inner, RootModel):
            keys.extend(_nested_keys(inner, f"{prefix}{name}."))
    return keys


def closest_key(key: str, candidates: Iterable[str]) -> str | None:
    """The candidate (a dotted path) that ``key`` most likely meant: the same name one level down
    (``base_url`` → ``anthropic.base_url``), else the closest spelling of the last name (difflib)."""
    candidates = sorted(candidates, key=lambda path: (path.count("."), path))
    last_names: dict[str, str] = {}
    for path in candidates:
        last_names.setdefault(path.rsplit(".", 1)[-1], path)
    if key in last_names:
        return last_names[key]
    close = difflib.get_close_matches(key, list(last_names), n=1, cutoff=0.75)
    return last_names[close[0]] if close else None


def _did_you_mean(prefix: str, key: str, candidates: Iterable[str]) -> str:
    suggestion = closest_key(key, candidates)
    if not suggestion:
        return ""
    return f"; did you mean `{prefix}.{suggestion}`?" if prefix else f"; did you mean `{suggestion}`?"


def _format_error(path: str, model: type[BaseModel], error: Mapping[str, Any]) -> str:
    """``<path>.<loc>: <message> (got <input>)``, with the closest and the accepted keys for an unknown one."""
    loc = tuple(error["loc"])
    where = ".".join([path, *(str(part) for part in loc)])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        parent = _submodel(model, loc[:-1])
        if parent is None:
            return f"{where}: unknown parameter"
        parent_path = ".".join([path, *(str(part) for part in loc[:-1])])
        hint = _did_you_mean(parent_path, str(loc[-1]), _nested_keys(parent))
        return f"{where}: unknown parameter; known keys: {sorted(parent.model_fields)}{hint}"
    value = error.get("input")
    echoed = error["type"] in ("missing", "value_error")  # our own messages name the value already
    shown = f" (got {value!r})" if isinstance(value, (int, float, str, bool)) and not echoed else ""
    return f"{where}: {message}{shown}"


def block_errors(params: Mapping[str, Any], path: str) -> list[str]:
    """Problems of the block at ``path`` against its model ([] when it has none or is absent)."""
    model = model_for(path)
    value = _lookup(params, path)
    if model is None or value is _MISSING:
        return []
    try:
        model.model_validate(value)
    except ValidationError as error:
        return [_format_error(path, model, item) for item in error.errors()]
    return []


def _ancestors(paths: Iterable[str]) -> set[str]:
    return {".".join(parts[:end]) for parts in (path.split(".") for path in paths) for end in range(1, len(parts))}


def _children(prefix: str, paths: set[str]) -> list[str]:
    """The keys directly under ``prefix`` ("" = top level) on the given paths."""
    depth = prefix.count(".") + 1 if prefix else 0
    return sorted({path.split(".")[depth] for path in paths if path.startswith(f"{prefix}.") or not prefix})


def unknown_key_errors(params: Mapping[str, Any], read_paths: Iterable[str], allowed: Iterable[str] = ()) -> list[str]:
    """Keys outside every block a pipeline reads (a mistyped block name, ``--params`` typos).

    Top-level keys starting with ``_`` (YAML anchors) and ``allowed`` names (runtime parameters the
    catalog reads) are accepted.
    """
    read = set(read_paths)
    ancestors, allowed = _ancestors(read), set(allowed)
    errors = []

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if path in read or (not prefix and (str(key).startswith("_") or key in allowed)):
                continue
            if path in ancestors and isinstance(value, Mapping):
                walk(value, path)
                continue
            known = _children(prefix, read | ancestors)
            hint = _did_you_mean(prefix, str(key), known)
            errors.append(f"{path}: unknown parameter; no pipeline reads it (known keys here: {known}){hint}")

    walk(params, "")
    return errors


def _secret_paths(params: Any, prefix: str = "") -> list[str]:
    items = params.items() if isinstance(params, Mapping) else enumerate(params) if isinstance(params, list) else ()
    found = []
    for key, value in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(key, str) and _SECRET_NAME.match(key) and value not in (None, ""):
            found.append(f"{path}: looks like a credential")
        elif isinstance(value, str) and _SECRET_VALUE.match(value.strip()):
            found.append(f"{path}: holds what looks like an Anthropic API key")
        else:
            found.extend(_secret_paths(value, path))
    return found


def secret_errors(params: Mapping[str, Any]) -> list[str]:
    """Credentials in the parameters (they would be logged to MLflow): a key named like one, or an Anthropic key."""
    return [
        f"{found}. Parameters are logged to MLflow: put credentials in the environment (ANTHROPIC_API_KEY) "
        "or conf/local/credentials.yml, never in parameters"
        for found in _secret_paths(params)
    ]


def parameter_errors(
    params: Mapping[str, Any], run_paths: Iterable[str], read_paths: Iterable[str], allowed: Iterable[str] = ()
) -> list[str]:
    """Every problem that stops a run, as ``<full.key.path>: <message>``.

    ``run_paths``: the blocks the pipeline about to run reads (checked against their models);
    ``read_paths``: the blocks any registered pipeline reads (keys outside them are unknown).
    Credentials anywhere in the parameters are errors too.
    """
    errors = secret_errors(params)
    for path in sorted(set(run_paths)):
        errors.extend(block_errors(params, path))
    return errors + unknown_key_errors(params, read_paths, allowed)


def _weights_errors(path: str, block: Any) -> list[str]:
    """``<path>.pretrained: …`` when the model block's weights cannot be loaded, ``<path>.architecture: …``
    when the architecture is not the one they were trained as (no model is built, nothing downloaded)."""
    from starft_pipeline.models.clip import (
        ArchitectureMismatch,
        check_architecture_fits_weights,
        check_weights_available,
    )

    if not isinstance(block, Mapping):
        return []
    spec, errors = ModelSpec(**block), []
    try:
        check_weights_available(spec)
    except (FileNotFoundError, ValueError) as error:
        errors.append(f"{path}.pretrained: {error}")
    try:
        check_architecture_fits_weights(spec)
    except ArchitectureMismatch as error:
        errors.append(f"{path}.architecture: {error}")
    except ValueError as error:
        errors.append(f"{path}.pretrained_tag: {error}")
    return errors


def precondition_errors(params: Mapping[str, Any], run_paths: Iterable[str]) -> list[str]:
    """What the run's stages need and the (valid) parameters say is missing, found before the first node runs.

    The teacher's weights (a file that is missing, not a file or unreadable; a tag not in the local
    cache) and a pinned descriptions file. Seconds, not a model build: a later stage must not fail
    after the earlier ones have run for minutes.
    """
    run_paths = set(run_paths)
    errors = []
    if "teacher" in run_paths:
        errors.extend(_weights_errors("teacher.model", _lookup(params, "teacher.model")))
    pinned = _lookup(params, "descriptions.pinned_file") if "descriptions" in run_paths else None
    if isinstance(pinned, str) and not Path(pinned).is_file():
        errors.append(
            f"descriptions.pinned_file: {pinned!r} is not a file (relative paths start at the project root); "
            "fix the path or set it to null"
        )
    return errors


def parameter_warnings(params: Mapping[str, Any], run_paths: Iterable[str], read_paths: Iterable[str]) -> list[str]:
    """Problems of the blocks that other stages read: not this run's, but they will stop those stages."""
    return [error for path in sorted(set(read_paths) - set(run_paths)) for error in block_errors(params, path)]


def check_parameters(
    params: Mapping[str, Any], run_paths: Iterable[str], read_paths: Iterable[str], allowed: Iterable[str] = ()
) -> None:
    """Raise :class:`ParameterError` listing every problem (see :func:`parameter_errors`)."""
    errors = parameter_errors(params, run_paths, read_paths, allowed)
    if errors:
        raise ParameterError("invalid parameters:\n" + "\n".join(f"  - {error}" for error in errors))

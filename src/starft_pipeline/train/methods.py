"""The fine-tuning methods: one table (:data:`METHOD_SPECS`), everything else derived from it.

A method is a row: its name (the Kedro namespace, the weights file, the label in results.csv), the
loss its training step minimises, where its classifier head starts and which regulariser it adds.
The finetune, evaluation and export pipelines, the typed parameters and the study read the table
through the functions below, at call time, so a row added here (docs/adding-a-method.md) is
trained, evaluated and exported with no other edit. No Kedro here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

from starft_pipeline.train.losses import RegulariserKind

#: The training step's loss: FLYP's contrastive loss (both towers), or a learned head's cross-entropy.
StepLoss = Literal["contrastive", "cross_entropy"]
#: Where a head method's classifier starts: the zero-shot head, or the linear probe fitted in ``lp``.
HeadInit = Literal["zero_shot", "linear_probe"]


@dataclass(frozen=True)
class MethodSpec:
    """One fine-tuning method. ``loss`` None: no training loop (LP only fits the probe)."""

    name: str
    loss: StepLoss | None
    head_init: HeadInit | None = None
    regulariser: RegulariserKind | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"method name {self.name!r} must be an identifier (it is a Kedro namespace)")
        if self.loss == "cross_entropy" and self.head_init is None:
            raise ValueError(f"method {self.name!r} trains a head: give it a head_init ({get_args(HeadInit)})")
        if self.regulariser is not None and self.loss != "contrastive":
            raise ValueError(f"method {self.name!r}: a regulariser is added to the contrastive loss only")

    @property
    def needs_teacher(self) -> bool:
        """The regulariser reads the frozen teacher's features (teacher_modes)."""
        return self.regulariser is not None

    @property
    def fits_probe(self) -> bool:
        """The method *is* the linear probe: it fits ``<name>.linear_probe`` and trains nothing."""
        return self.loss is None


#: Every method, in report order (results.csv, figures' colours, the methods table).
METHOD_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("lp", None, head_init="linear_probe", summary="logistic regression on the frozen image features"),
    MethodSpec("ft", "cross_entropy", head_init="zero_shot", summary="image tower and the zero-shot head"),
    MethodSpec("lp_ft", "cross_entropy", head_init="linear_probe", summary="FT starting from LP's head"),
    MethodSpec("flyp", "contrastive", summary="both towers and τ, CLIP's contrastive loss on captions"),
    MethodSpec("star", "contrastive", regulariser="star", summary="FLYP + StarFT's spuriosity alignment"),
    MethodSpec("kl", "contrastive", regulariser="kl", summary="FLYP + plain KL to the teacher (no mask)"),
)


def method_names() -> tuple[str, ...]:
    """The methods' names in table order (read at call time: a test may extend the table)."""
    return tuple(spec.name for spec in METHOD_SPECS)


def teacher_method_names() -> tuple[str, ...]:
    """The methods with a regulariser, i.e. a teacher (StarFT and its plain-KL variant)."""
    return tuple(spec.name for spec in METHOD_SPECS if spec.needs_teacher)


def unknown_methods(names: Iterable[str]) -> list[str]:
    """The entries of ``names`` that are not methods of the table: the one check every message uses."""
    known = method_names()
    return [name for name in names if name not in known]


def check_method(name: str) -> str:
    """``name`` when it is a method of the table; else a ValueError naming the choices."""
    if unknown_methods([name]):
        raise ValueError(f"method must be one of {', '.join(method_names())}; got {name!r}")
    return name


def check_methods(names: Iterable[str], where: str) -> list[str]:
    """``names`` as a list when every one is a method; else a ValueError naming ``where`` (a parameter) and the choices."""
    names = list(names)
    unknown = unknown_methods(names)
    if unknown:
        raise ValueError(f"{where} lists {unknown}, which are not fine-tuning methods; known: {list(method_names())}")
    return names


def method_spec(name: str) -> MethodSpec:
    """The table's row of ``name`` (ValueError naming the choices when there is none)."""
    check_method(name)
    return next(spec for spec in METHOD_SPECS if spec.name == name)


#: The default table's names, for constants and tests; the library reads :func:`method_names`.
METHODS: tuple[str, ...] = method_names()

"""What every config dataclass shares: building it from a parameters block, and its ranges.

* :func:`config_from_params`: an unknown key is an error that names it and lists the known ones;
  lists become tuples (the configs are frozen and hashable).
* :func:`bounded`: a dataclass field that carries its range (``field(metadata=...)``) and, for
  rules that are not a range, a check function; :func:`check_fields` runs them in ``__post_init__``
  and the app's typed parameter models (``params.py``) read the same bounds and checks, so a rule
  is written once.

No Kedro here.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

Config = TypeVar("Config")

#: The metadata keys of a field's bounds (``{"ge": 1}``, ``{"gt": 0, "lt": 1}``) and of its check.
BOUNDS, CHECK = "bounds", "check"
#: A value check: returns the value, raises ValueError with a message that names the field.
Check = Callable[[Any], Any]
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
# Pydantic's names for the comparisons, with the comparison and how a message words it.
_COMPARISONS = {
    "ge": (operator.ge, ">="),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "<="),
    "lt": (operator.lt, "<"),
}


def known_keys(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


def reject_unknown_keys(
    params: Mapping[str, Any], known: Iterable[str], block: str, exclude: Iterable[str] = ()
) -> None:
    """``ValueError: unknown <block> parameter(s) [...]; known: [...]`` when ``params`` has a key outside ``known``."""
    known = set(known)
    unknown = sorted(set(params) - known - set(exclude))
    if unknown:
        raise ValueError(f"unknown {block} parameter(s) {unknown}; known: {sorted(known)}")


def config_from_params(
    cls: type[Config], params: Mapping[str, Any] | None, block: str, exclude: Iterable[str] = ()
) -> Config:
    """``cls`` built from a parameters block (None: the defaults).

    ``block`` names it in the error (``finetune``, ``pretrain``); keys in ``exclude`` are read by
    someone else (the node) and skipped here.
    """
    params = dict(params or {})
    known = known_keys(cls)
    reject_unknown_keys(params, known, block, exclude)
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in params.items() if key in known}
    return cls(**values)


def check_device(value: str) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:<index> or mps, got {value!r}")
    return value


def check_crop_scale(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {list(value)}")
    return value


def check_crop_ratio(value: tuple[float, float]) -> tuple[float, float]:
    low, high = value
    if not 0.0 < low <= 1.0 <= high:
        raise ValueError(
            f"crop_ratio (width / height) must satisfy 0 < low <= 1 <= high (e.g. [1, 1]: square, "
            f"[0.75, 1.333]: the official crop), got {list(value)}"
        )
    return value


def bounded(default: Any, check: Check | None = None, **bounds: float) -> Any:
    """A dataclass field with ``default``, its range (``bounded(3, ge=1)``) and/or a ``check``.

    None passes the range (an optional field: ``bounded(None, ge=1)``).
    """
    unknown = sorted(set(bounds) - set(_COMPARISONS))
    if unknown:
        raise TypeError(f"bounded: unknown bound(s) {unknown}; use {sorted(_COMPARISONS)}")
    metadata: dict[str, Any] = {BOUNDS: bounds}
    if check is not None:
        metadata[CHECK] = check
    return dataclasses.field(default=default, metadata=metadata)


def field_bounds(cls: type) -> dict[str, dict[str, float]]:
    """The bounds of each bounded field of ``cls`` (what :func:`bounded` declared; may be empty)."""
    return {field.name: dict(field.metadata[BOUNDS]) for field in dataclasses.fields(cls) if BOUNDS in field.metadata}


def field_checks(cls: type) -> dict[str, Check]:
    """The check of each field of ``cls`` that declares one."""
    return {field.name: field.metadata[CHECK] for field in dataclasses.fields(cls) if CHECK in field.metadata}


def range_error(value: Any, bounds: Mapping[str, float]) -> str | None:
    """``"must be >= 1"`` when ``value`` is outside ``bounds`` (None: inside, or None itself)."""
    if value is None:
        return None
    failed = []
    for name, bound in bounds.items():
        compare, word = _COMPARISONS[name]
        if not compare(value, bound):
            failed.append(f"{word} {bound:g}")
    return f"must be {' and '.join(failed)}" if failed else None


def check_fields(config: Any, prefix: str) -> None:
    """``ValueError`` for the first field of ``config`` out of its range or failing its check.

    ``prefix`` starts each message: ``"finetune "`` gives ``finetune epochs must be >= 1, got 0``.
    """
    checks = field_checks(type(config))
    for name, bounds in field_bounds(type(config)).items():
        value = getattr(config, name)
        problem = range_error(value, bounds)
        if problem:
            raise ValueError(f"{prefix}{name} {problem}, got {value}")
        if name in checks and value is not None:
            try:
                checks[name](value)
            except ValueError as error:
                raise ValueError(f"{prefix}{error}") from None

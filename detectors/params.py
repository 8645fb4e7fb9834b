"""Validation of detector parameters, with messages that name the parameter.

A detector's constructor arguments come from a JSON configuration file
(:mod:`detectors.registry`), so they arrive as ints, floats, strings and lists;
``True`` is an ``int`` to Python but never a count or an amount here. Each
function returns the value in the form the detector computes with and raises
``ValueError`` with the parameter's name otherwise.
"""

from __future__ import annotations

import math
from typing import Any


def positive_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 1.

    Examples
    --------
    >>> positive_int("min_count", 3)
    3
    >>> positive_int("min_count", True)
    Traceback (most recent call last):
    ...
    ValueError: min_count must be an int >= 1, not True
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        message = f"{name} must be an int >= 1, not {value!r}"
        raise ValueError(message)
    return value


def non_negative_int(name: str, value: Any) -> int:
    """``value`` as an ``int`` >= 0."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        message = f"{name} must be an int >= 0, not {value!r}"
        raise ValueError(message)
    return value


def positive_number(name: str, value: Any) -> float:
    """``value`` as a finite ``float`` > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        message = f"{name} must be a number, not {value!r}"
        raise ValueError(message)
    if not value > 0 or math.isinf(value):
        message = f"{name} must be positive and finite, not {value!r}"
        raise ValueError(message)
    return float(value)


def fraction(name: str, value: Any) -> float:
    """``value`` as a ``float`` in (0, 1].

    Examples
    --------
    >>> fraction("band_fraction", 0.9)
    0.9
    >>> fraction("band_fraction", 1.5)
    Traceback (most recent call last):
    ...
    ValueError: band_fraction must be a number in (0, 1], not 1.5
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        message = f"{name} must be a number in (0, 1], not {value!r}"
        raise ValueError(message)
    return float(value)


def string_set(name: str, value: Any, *, allow_empty: bool = True) -> frozenset[str]:
    """A list (or tuple) of non-empty strings as a ``frozenset``.

    A bare string is refused: ``"transfer"`` would otherwise become the set of
    its letters.

    Examples
    --------
    >>> sorted(string_set("event_types", ["transfer", "top_up"]))
    ['top_up', 'transfer']
    >>> string_set("event_types", "transfer")
    Traceback (most recent call last):
    ...
    ValueError: event_types must be a list of non-empty strings, not 'transfer'
    """
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple | frozenset | set):
        message = f"{name} must be a list of non-empty strings, not {value!r}"
        raise ValueError(message)
    for item in value:
        if not isinstance(item, str) or not item:
            message = f"{name} must hold non-empty strings only, not {item!r}"
            raise ValueError(message)
    if not value and not allow_empty:
        message = f"{name} must not be empty"
        raise ValueError(message)
    return frozenset(value)


def optional_int(x_value: Any) -> int | None:
    """A feature that should be an ``int`` (``ts``, ``amount_minor``), or ``None``.

    Features come from the worker, but a detector must not raise on a sparse
    or odd mapping (see :func:`detectors.conformance.check_missing_optional_fields`).
    """
    if type(x_value) is int:  # the usual case, decided without two isinstance calls
        return x_value
    if isinstance(x_value, bool) or not isinstance(x_value, int):
        return None
    return x_value

"""Builders for the entries of a node's ``INPUT_TYPES`` (ComfyUI's V1 input specs: ``(TYPE, options)``).

They write exactly the tuples ComfyUI reads (docs/architecture.md, "Nodes"): ``int_input(8, 1, 256, "W: ...")`` is
``("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "W: ..."})``. Extra options (``step``,
``control_after_generate``, ``forceInput``, ...) go between the range and the tooltip.

:func:`widget_problem` and :func:`check_widgets` check a widget value against the same entry, for the nodes'
``VALIDATE_INPUTS``. ComfyUI (0.3.75 and 0.30.0, ``execution.validate_inputs``) calls ``VALIDATE_INPUTS`` on the class
with the widget values of the inputs its signature names (a linked input arrives as None) and then SKIPS its own
min/max check for those inputs, so the check here redoes the range, and adds what ComfyUI never checks: a FLOAT
must be finite (NaN passes both ``<`` tests) and an INT with a ``step`` must be a multiple of it (the widget only
offers multiples; an API prompt can send any number).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Dict, Optional, Sequence, Tuple, Union

from .models import SeedStoryInputError

Spec = Tuple[Any, Dict[str, Any]]


def int_input(default: int, lo: int, hi: int, tooltip: str, **extra: Any) -> Spec:
    """An ``INT`` widget with its range."""
    return ("INT", {"default": default, "min": lo, "max": hi, **extra, "tooltip": tooltip})


def float_input(default: float, lo: float, hi: float, step: float, tooltip: str) -> Spec:
    """A ``FLOAT`` widget with its range and step."""
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tooltip})


def bool_input(default: bool, tooltip: str) -> Spec:
    """A ``BOOLEAN`` toggle."""
    return ("BOOLEAN", {"default": default, "tooltip": tooltip})


def choice_input(choices: Sequence[str], default: str, tooltip: str) -> Spec:
    """A combo (drop-down) of ``choices``."""
    return (list(choices), {"default": default, "tooltip": tooltip})


def text_input(tooltip: str, *, default: str = "", **extra: Any) -> Spec:
    """A multi-line ``STRING`` box (``placeholder`` and other options in ``extra``)."""
    return ("STRING", {"multiline": True, "default": default, **extra, "tooltip": tooltip})


def line_input(default: str, tooltip: str) -> Spec:
    """A one-line ``STRING`` field."""
    return ("STRING", {"default": default, "tooltip": tooltip})


def socket_input(socket: str, tooltip: str) -> Spec:
    """A connection-only input of type ``socket`` (e.g. ``SEEDSTORY_AGENT``, ``IMAGE``)."""
    return (socket, {"tooltip": tooltip})


def _spec(node_cls, name: str) -> Optional[Spec]:
    spec = node_cls.INPUT_TYPES()
    for group in ("required", "optional"):
        if name in spec.get(group, {}):
            return spec[group][name]
    return None


def spec_problem(spec: Spec, name: str, value: Any) -> Optional[str]:
    """Why ``value`` breaks the ``INPUT_TYPES`` entry ``spec`` of the input ``name``, or None when it is fine.

    FLOAT: a finite number within min..max; INT: a whole number within min..max and, with a ``step``, a multiple of
    it (counted from min). Other types and None (a linked input, at validation) pass.

    Returns:
        str | None: ``"'name' must be ..., found ..."`` (expected, found, what to send).
    """
    if value is None or spec is None or spec[0] not in ("INT", "FLOAT"):
        return None
    kind, opts = spec
    lo, hi = opts.get("min", -math.inf), opts.get("max", math.inf)
    if isinstance(value, bool) or not isinstance(value, Real):
        return f"'{name}' must be a number ({kind}) between {lo} and {hi}, found {value!r}."
    if kind == "FLOAT" and not math.isfinite(value):
        return (
            f"'{name}' must be a finite number between {lo} and {hi}, found {value}. NaN and infinity are not "
            f"values a setting can take; send a number (default {opts.get('default')})."
        )
    if kind == "INT" and value != int(value):
        return f"'{name}' must be a whole number between {lo} and {hi}, found {value}."
    if not lo <= value <= hi:
        return f"'{name}' must be between {lo} and {hi}, found {value}."
    step = opts.get("step", 1) if kind == "INT" else 1
    if step > 1 and (int(value) - int(lo)) % step:
        below = int(lo) + (int(value) - int(lo)) // step * step
        return f"'{name}' must be a multiple of {step}, found {value}; use {below} or {below + step}."
    return None


def widget_problem(node_cls, name: str, value: Any) -> Optional[str]:
    """:func:`spec_problem` for the input ``name`` of ``node_cls`` (an unknown name passes)."""
    return spec_problem(_spec(node_cls, name), name, value)


def check_widgets(node_cls, **values: Any) -> Union[bool, str]:
    """``VALIDATE_INPUTS`` helper: True, or ``"<DISPLAY_NAME>: <first problem>"`` (:func:`widget_problem`) -- the
    message ComfyUI shows in ``node_errors`` (POST /prompt answers HTTP 400 and queues nothing)."""
    for name, value in values.items():
        problem = widget_problem(node_cls, name, value)
        if problem is not None:
            return f"{node_cls.DISPLAY_NAME}: {problem}"
    return True


def require_widgets(node_cls, **values: Any) -> None:
    """:func:`check_widgets` when the node runs (a linked value, e.g. from a primitive node, skipped validation).

    Raises:
        SeedStoryInputError: the first problem, starting with the node's name.
    """
    verdict = check_widgets(node_cls, **values)
    if verdict is not True:
        raise SeedStoryInputError(verdict)

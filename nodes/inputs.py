"""Builders for the entries of a node's ``INPUT_TYPES`` (ComfyUI's V1 input specs: ``(TYPE, options)``).

They write exactly the tuples ComfyUI reads (docs/architecture.md, "Nodes"): ``int_input(8, 1, 256, "W: ...")`` is
``("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "W: ..."})``. Extra options (``step``,
``control_after_generate``, ``forceInput``, ...) go between the range and the tooltip.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

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

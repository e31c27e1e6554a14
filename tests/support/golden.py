"""Loading a golden fixture of the reference set (docs/reference.md §10): ``<name>.safetensors`` with its JSON
sidecar ``<name>.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from safetensors.torch import load_file

Tensors = Dict[str, torch.Tensor]


def load_fixture(golden_dir: Path, name: str) -> Tuple[Dict[str, Any], Tensors, Tensors, Tensors]:
    """(meta, state_dict, inputs, expected) of the fixture ``name`` (e.g. ``"agent_public"``) in ``golden_dir``.

    ``meta`` is the JSON sidecar; the file's ``input.*`` and ``output.*`` tensors go to ``inputs`` and ``expected``
    with that prefix taken off, and every other tensor to ``state_dict``.
    """
    tensors = load_file(str(golden_dir / f"{name}.safetensors"))
    meta = json.loads((golden_dir / f"{name}.json").read_text())
    sd = {k: v for k, v in tensors.items() if not k.startswith(("input.", "output."))}
    inputs = {k[len("input.") :]: v for k, v in tensors.items() if k.startswith("input.")}
    expected = {k[len("output.") :]: v for k, v in tensors.items() if k.startswith("output.")}
    return meta, sd, inputs, expected

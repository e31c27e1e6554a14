"""Convert official SEED-Story checkpoints (pickled ``.bin`` / ``.pt``) into ``.safetensors``.

Usage::

    python -m seedstory_core.convert {vit,agent,detokenizer} INPUT OUTPUT_DIR [--shard-size 4GB]
        [--dtype keep|fp16|bf16|fp32] [--overwrite]

* ``INPUT`` is read safely with :func:`seedstory_core.checkpoints.read_state_dict` (``torch.load(weights_only=True,
  mmap=True)`` for pickles: a pickle that would run code is refused) and its kind is checked with
  :func:`~seedstory_core.checkpoints.require_kind` (a ViT file given as ``agent`` is refused).
* The official key names are kept, so every loader accepts both the original and the converted file.
* ``OUTPUT_DIR`` receives ``model.safetensors`` or, above ``--shard-size``, ``model-0000i-of-0000n.safetensors``
  plus ``model.safetensors.index.json`` (shard plan by ``huggingface_hub.split_torch_state_dict_into_shards``),
  written shard by shard (the pickled input is memory-mapped, so only one shard is materialised at a time), and
  ``key_map.json``: the official -> our key mapping the loaders apply, the rules it came from, and the source
  file's name, size and sha256.
* ``--dtype`` casts floating tensors (``keep`` = as stored); RoPE ``inv_freq`` buffers stay float32 (they are
  checked to 1e-6 on load).

Official checkpoint names and layouts: docs/reference.md §0, §1, §2.4, §4, §9.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file

from .checkpoints import CheckpointError, KeyRule, apply_key_rules, read_state_dict, require_kind
from .official_agent import agent_key_rules

__all__ = ["KINDS", "KEY_RULE_PROVIDERS", "parse_size", "convert_checkpoint", "main", "KEY_MAP_FILENAME"]

KEY_MAP_FILENAME = "key_map.json"
KINDS = {"vit": "visual_tokenizer", "agent": "agent", "detokenizer": "detokenizer"}
DTYPES = {"keep": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_KEEP_FP32 = re.compile(r".*rotary_emb\.inv_freq")


def _identity_rules(kind: str) -> Callable[[], List[KeyRule]]:
    def provider() -> List[KeyRule]:
        return []

    provider.__doc__ = f"{kind}: official key names are used unchanged by the loader (no rules)."
    return provider


#: kind -> function returning the official -> ours :class:`KeyRule` list recorded in ``key_map.json``. The ViT
#: (``qwen_vit_G.pt``, docs/reference.md §1) and de-tokenizer modules use the official names; their loader modules
#: may register their own rules here.
KEY_RULE_PROVIDERS: Dict[str, Callable[[], List[KeyRule]]] = {
    "agent": agent_key_rules,
    "vit": _identity_rules("vit"),
    "detokenizer": _identity_rules("detokenizer"),
}


def parse_size(text: Union[str, int]) -> int:
    """'4GB' / '500MB' / '64KB' / '123' -> bytes (decimal units as huggingface_hub; 'GiB' etc. are binary).

    Raises: ValueError with the accepted forms.
    """
    if isinstance(text, int):
        if text <= 0:
            raise ValueError(f"shard size must be positive, got {text}")
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"Cannot parse size {text!r}: expected e.g. 4GB, 500MB, 64KB, 2GiB or a byte count")
    value = float(m.group(1))
    unit = (m.group(2) or "B").upper()
    binary = "I" in unit
    letter = unit[0] if unit[0] in "KMGT" else ""
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[letter]
    size = int(value * ((1024 if binary else 1000) ** power))
    if size <= 0:
        raise ValueError(f"shard size must be positive, got {text!r}")
    return size


def _sha256(path: Path, block: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(block)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


def _source_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _target_dtype(key: str, tensor: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.dtype:
    if dtype is None or not tensor.is_floating_point() or _KEEP_FP32.fullmatch(key):
        return tensor.dtype
    return dtype


def convert_checkpoint(
    kind: str,
    input_path,
    output_dir,
    *,
    shard_size: Union[str, int] = "4GB",
    dtype: str = "keep",
    overwrite: bool = False,
) -> Path:
    """Convert one official checkpoint to safetensors (see the module docstring).

    Args:
        kind: 'vit', 'agent' or 'detokenizer'.
        input_path: the official file (``.bin``/``.pt``/``.pth``/``.ckpt``/``.safetensors``) or folder.
        output_dir: folder to write (created); must not already hold a converted model unless ``overwrite``.
        shard_size: max bytes per shard ('4GB', '500MB', int).
        dtype: 'keep', 'fp16', 'bf16' or 'fp32' (floating tensors only; inv_freq stays float32).
        overwrite: replace existing ``model*.safetensors`` / index / key_map files in ``output_dir``.

    Returns: the path of ``model.safetensors`` or of ``model.safetensors.index.json``.

    Raises:
        ValueError: unknown kind / dtype / size.
        FileNotFoundError: missing input.
        UnsafeCheckpointError: the pickle needs code execution (nothing is executed).
        WrongCheckpointKindError: the file is another model's checkpoint.
        FileExistsError: output_dir already holds converted files and ``overwrite`` is False.
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}; choose one of {sorted(KINDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"Unknown --dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    max_bytes = parse_size(shard_size)
    input_path = Path(input_path)
    output_dir = Path(output_dir)
    if not input_path.exists():
        raise FileNotFoundError(f"Input checkpoint not found: {input_path}")
    existing = (
        sorted(output_dir.glob("model*.safetensors")) + sorted(output_dir.glob("model.safetensors.index.json"))
        if output_dir.is_dir()
        else []
    )
    if existing and not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds converted files ({', '.join(p.name for p in existing[:3])}); "
            "choose an empty folder or pass --overwrite."
        )

    state_dict = read_state_dict(input_path)  # safe: weights_only pickle loading, mmap where possible
    keys = list(state_dict.keys())
    require_kind(keys, KINDS[kind], input_path)
    target = DTYPES[dtype]

    # plan shards on meta stand-ins of the converted tensors (nothing is materialised)
    plan_dict = {
        k: torch.empty(tuple(v.shape), dtype=_target_dtype(k, v, target), device="meta") for k, v in state_dict.items()
    }
    split = split_torch_state_dict_into_shards(
        plan_dict, filename_pattern="model{suffix}.safetensors", max_shard_size=max_bytes
    )

    output_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for p in existing:
            p.unlink()
    metadata = {"format": "pt", "seedstory_kind": kind, "key_naming": "official", "source": input_path.name}
    for filename, shard_keys in split.filename_to_tensors.items():
        tensors = {}
        seen_storage = set()
        for key in shard_keys:
            t = state_dict[key]
            t = t.to(_target_dtype(key, t, target)).contiguous()
            ptr = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
            if t.untyped_storage().nbytes() != t.numel() * t.element_size() or ptr in seen_storage:
                t = t.clone()  # safetensors refuses shared / oversized storages
            if ptr is not None:
                seen_storage.add(ptr)
            tensors[key] = t
        save_file(tensors, str(output_dir / filename), metadata=metadata)
        del tensors
    if split.is_sharded:
        index = {
            "metadata": dict(split.metadata, **{"seedstory_kind": kind, "key_naming": "official"}),
            "weight_map": split.tensor_to_filename,
        }
        out_path = output_dir / "model.safetensors.index.json"
        out_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    else:
        out_path = output_dir / next(iter(split.filename_to_tensors))

    rules = KEY_RULE_PROVIDERS[kind]()
    mapping = apply_key_rules(keys, rules)
    key_map = {
        "format_version": 1,
        "kind": kind,
        "key_naming_in_files": "official",
        "source": {
            "name": input_path.name,
            "size_bytes": _source_size(input_path),
            "sha256": _sha256(input_path) if input_path.is_file() else None,
        },
        "dtype": dtype,
        "num_tensors": len(keys),
        "total_bytes": split.metadata.get("total_size"),
        "rules": [{"official": r.official, "ours": r.ours, "note": r.note} for r in rules],
        "mapping": mapping,
        "notes": (
            ["keys matching the inv_freq rule are checked against the model's RoPE table on load, not stored"]
            if kind == "agent"
            else ["the loader uses these official key names unchanged"]
        ),
    }
    (output_dir / KEY_MAP_FILENAME).write_text(json.dumps(key_map, indent=2) + "\n")
    return out_path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the process exit code (0 ok, 2 on a reported error)."""
    parser = argparse.ArgumentParser(
        prog="python -m seedstory_core.convert",
        description=(
            "Convert an official SEED-Story checkpoint (.bin/.pt) to safetensors, keeping the official key names."
        ),
    )
    parser.add_argument("kind", choices=sorted(KINDS), help="which component the file holds")
    parser.add_argument("input", help="official checkpoint file (e.g. pytorch_model.bin, qwen_vit_G.pt)")
    parser.add_argument("output_dir", help="folder to write model*.safetensors (+ index) and key_map.json into")
    parser.add_argument("--shard-size", default="4GB", help="max shard size, e.g. 4GB, 500MB (default 4GB)")
    parser.add_argument("--dtype", default="keep", choices=sorted(DTYPES), help="cast floating tensors (default keep)")
    parser.add_argument("--overwrite", action="store_true", help="replace converted files already in output_dir")
    args = parser.parse_args(argv)
    try:
        out = convert_checkpoint(
            args.kind,
            args.input,
            args.output_dir,
            shard_size=args.shard_size,
            dtype=args.dtype,
            overwrite=args.overwrite,
        )
    except (CheckpointError, FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out} (and {KEY_MAP_FILENAME})")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

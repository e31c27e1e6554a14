"""Safe checkpoint reading, key accounting and clear mismatch errors.

The official SEED-Story loaders call ``torch.load`` and ``load_state_dict(strict=False)``, printing only counts,
so a wrong prefix fails silently (docs/reference.md §0 "Construction"). Every load here instead:

* reads ``.safetensors`` first, and pickled ``.bin``/``.pt``/``.pth``/``.ckpt`` only through
  ``torch.load(..., weights_only=True)`` (a pickle that would execute code is refused with
  :class:`UnsafeCheckpointError`);
* maps official key names onto this project's modules through an explicit, recorded key map;
* accounts for every key (:class:`LoadReport`: loaded / missing / unexpected, grouped by prefix) and raises
  :class:`CheckpointMismatchError` naming the file, key, expected shape and found shape on any shape mismatch;
* recognises a file of the wrong model kind (:func:`detect_checkpoint_kind`) and says which kind it looks like;
* turns a damaged file (truncated download, junk, a Git LFS pointer, an HTML error page, a text file with a weights
  extension) into :class:`CorruptCheckpointError`, which names the file, what was expected, what was found and what
  to do, instead of the reader's raw ``SafetensorError`` / ``RuntimeError`` / ``EOFError``;
* assigns tensors into meta-device modules (``load_state_dict(assign=True)``) so a full-size load never holds
  two copies of the weights.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import zipfile
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from safetensors import SafetensorError, safe_open

PathLike = Union[str, os.PathLike]

SAFETENSORS_EXTS = (".safetensors", ".sft")
PICKLE_EXTS = (".bin", ".pt", ".pth", ".ckpt")


class CheckpointError(RuntimeError):
    """Base class of every checkpoint problem this module reports."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled file needs code execution to load (``weights_only=True`` refused it)."""


class CheckpointMismatchError(CheckpointError):
    """A tensor's shape differs from the module's, or required keys are missing."""


class WrongCheckpointKindError(CheckpointError):
    """The file holds another model's weights (e.g. a ViT file given as the agent)."""


class CorruptCheckpointError(CheckpointError):
    """The file cannot be read as the format its extension promises (truncated, junk, not a checkpoint at all)."""


# ---------------------------------------------------------------------------------------------------- damaged files
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_PROTO = 0x80  # the PROTO opcode every legacy torch.save (pickle protocol >= 2) starts with
_REDO = "Re-download the file (check its size against the source) or convert it again."


def _head(path: Path, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(n)
    except OSError:
        return b""


def _looks_like(head: bytes, *, safetensors_name: bool) -> Optional[Tuple[str, str]]:
    """(what the file is, what to do) when its first bytes are recognisably not the format its name promises."""
    text = head.lstrip()
    if text.startswith(b"version https://git-lfs"):
        return (
            "a Git LFS pointer, a small text file that stands for the real weights",
            "Run `git lfs pull` in the repository it came from, or download the file itself.",
        )
    if text[:15].lower().startswith((b"<!doctype html", b"<html")):
        return (
            "an HTML page (a failed download saves the server's error page under the file's name)",
            "Download the file again (some hosts need you to log in or accept a licence first).",
        )
    if safetensors_name and (head.startswith(_ZIP_MAGIC) or (head and head[0] == _PICKLE_PROTO)):
        return (
            "a PyTorch checkpoint (torch.save zip/pickle) with a .safetensors name",
            "Rename it to .bin or .pt (read safely, weights_only=True), or convert it: "
            "python -m seedstory_core.convert FILE OUTPUT_DIR.",
        )
    if not safetensors_name and len(head) >= 10 and head[8:10] == b'{"':
        return ("a safetensors file with a PyTorch-pickle extension", "Rename it to .safetensors.")
    if head.startswith((b"{", b"[")):
        return ("JSON text", "Pick the weights file, not a config or index file.")
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return (f"plain text starting {head[:40].decode('ascii', 'replace')!r}", _REDO)
    return None


def _size(path: Path) -> str:
    try:
        return f"{path.stat().st_size} bytes"
    except OSError:
        return "size unknown"


def _detail(err: Optional[BaseException]) -> str:
    if err is None:
        return ""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _safetensors_detail(path: Path, err: BaseException) -> str:
    """Why a safetensors file failed, in terms of its own header when that is readable (truncation: sizes)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            n = int.from_bytes(handle.read(8), "little")
            if size >= 8 and 8 + n <= size and n < 100_000_000:
                header = json.loads(handle.read(n))
                end = max(
                    (
                        int(v["data_offsets"][1])
                        for k, v in header.items()
                        if k != "__metadata__" and isinstance(v, Mapping) and "data_offsets" in v
                    ),
                    default=0,
                )
                if 8 + n + end > size:
                    return f"its header describes {8 + n + end} bytes of data, the file has only {size}"
            elif size >= 8 and 8 + n > size:
                return (
                    f"cut short or not safetensors: the first 8 bytes announce a {n}-byte header, "
                    f"the file has {size} bytes"
                )
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        pass
    return _detail(err)


def corrupt_safetensors(path: PathLike, err: BaseException) -> CorruptCheckpointError:
    """The error for a ``.safetensors`` file the reader refused (``err``: the reader's own exception)."""
    path = Path(path)
    head = _head(path)
    # A safetensors layout (8-byte length, then the JSON header's "{") is judged by its header length against the
    # file size before any sniffing: a length whose low byte is 0x80 (1 file in 256) looks like a pickle's PROTO.
    known = None if head[8:9] == b"{" else _looks_like(head, safetensors_name=True)
    what, todo = (
        (f"it is {known[0]}", known[1]) if known else (f"truncated or corrupt: {_safetensors_detail(path, err)}", _REDO)
    )
    return CorruptCheckpointError(
        f"{path} is not a valid safetensors file ({what}; {_size(path)}). Expected a safetensors file (an 8-byte "
        f"header length, a JSON header, then the tensor data it describes). {todo}"
    )


def corrupt_pickle(path: PathLike, err: Optional[BaseException]) -> CorruptCheckpointError:
    """The error for a ``.bin``/``.pt``/``.pth``/``.ckpt`` file that is not a readable PyTorch checkpoint."""
    path = Path(path)
    head = _head(path)
    expected = (
        "Expected a PyTorch checkpoint written by torch.save (a zip archive, or a pickle in the old "
        "format) holding a dict of tensors."
    )
    if not head:
        return CorruptCheckpointError(f"{path} is empty ({_size(path)}), not a PyTorch checkpoint. {expected} {_REDO}")
    if head.startswith(_ZIP_MAGIC):
        detail = (
            "the zip archive's central directory is missing, so the file was cut short"
            if not zipfile.is_zipfile(path)
            else _detail(err)
        )
        return CorruptCheckpointError(
            f"{path} is not a valid PyTorch checkpoint: it starts like a torch.save zip archive but cannot be read "
            f"(truncated or corrupt: {detail}; {_size(path)}). {_REDO}"
        )
    if head[0] == _PICKLE_PROTO:
        return CorruptCheckpointError(
            f"{path} is not a valid PyTorch checkpoint: it starts like an old-format torch.save pickle but cannot be "
            f"read (truncated or corrupt: {_detail(err)}; {_size(path)}). {_REDO}"
        )
    known = _looks_like(head, safetensors_name=False)
    what, todo = known if known else (f"the bytes {head[:16]!r}", _REDO)
    return CorruptCheckpointError(
        f"{path} is not a PyTorch checkpoint: it is neither a zip archive nor a pickle (it is {what}; "
        f"{_size(path)}). {expected} {todo}"
    )


def open_safetensors(path: PathLike, *, device: Union[str, torch.device] = "cpu"):
    """``safetensors.safe_open(path, framework="pt", device=device)``, with a damaged file reported as
    :class:`CorruptCheckpointError` (the header is read and checked against the file size when opened)."""
    try:
        return safe_open(str(path), framework="pt", device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise corrupt_safetensors(path, err) from None


# ---------------------------------------------------------------------------------------------------- reading
#: The file names a Hugging Face-style model folder holds its weights under, in the order they are looked for.
STANDARD_CHECKPOINT_NAMES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)


def standard_checkpoint_file(folder: PathLike) -> Optional[Path]:
    """The first of :data:`STANDARD_CHECKPOINT_NAMES` present in ``folder``, or None."""
    for name in STANDARD_CHECKPOINT_NAMES:
        if (Path(folder) / name).exists():
            return Path(folder) / name
    return None


def read_state_dict(path: PathLike, *, device: Union[str, torch.device] = "cpu") -> "OrderedDict[str, torch.Tensor]":
    """Read every tensor of a checkpoint file (or of a sharded checkpoint folder / index JSON).

    Args:
        path: ``.safetensors``/``.sft`` (memory-mapped), a pickled ``.bin``/``.pt``/``.pth``/``.ckpt`` (loaded with
            ``torch.load(weights_only=True, mmap=True)``), a ``*.index.json`` shard index, or a folder holding one
            of ``model.safetensors(.index.json)`` / ``pytorch_model.bin(.index.json)``.
        device: where tensors are placed (CPU by default; callers move them with the module).

    Returns:
        ``OrderedDict`` key -> tensor. Nested pickles of the form ``{"state_dict": {...}}`` / ``{"module": {...}}``
        are unwrapped.

    Raises:
        FileNotFoundError: the path does not exist (message says what was looked for).
        UnsafeCheckpointError: a pickle would execute code or contains non-tensor objects torch refuses.
        CorruptCheckpointError: the file is truncated, junk or not a checkpoint at all (the message says which).
        CheckpointError: the file is not a recognised checkpoint format.
    """
    path = Path(path)
    if path.is_dir():
        found = standard_checkpoint_file(path)
        if found is not None:
            return read_state_dict(found, device=device)
        candidates = sorted(p.name for p in path.iterdir() if p.suffix in SAFETENSORS_EXTS + PICKLE_EXTS)
        if len(candidates) == 1:
            return read_state_dict(path / candidates[0], device=device)
        raise FileNotFoundError(
            f"No checkpoint found in folder {path}: expected model.safetensors, pytorch_model.bin or an index JSON"
            + (f" (found several candidates: {candidates}; pass one file)" if candidates else "")
        )
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint file not found: {path}")
    name = path.name
    if name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CorruptCheckpointError(
                f"{path} is not a valid shard index ({err}). Expected the JSON file written next to the shards "
                f"(with a 'weight_map' of tensor name -> shard file). {_REDO}"
            ) from None
        if not isinstance(index, Mapping) or not isinstance(index.get("weight_map", {}), Mapping):
            raise CorruptCheckpointError(
                f"{path}: expected a JSON object with a 'weight_map' mapping, found {type(index).__name__}. {_REDO}"
            )
        shards = sorted(set(index.get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{path}: shard index has an empty 'weight_map'")
        out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        for shard in shards:
            out.update(read_state_dict(path.parent / shard, device=device))
        return out
    if path.suffix in SAFETENSORS_EXTS:
        with open_safetensors(path, device=device) as handle:
            return OrderedDict((k, handle.get_tensor(k)) for k in handle.keys())
    if path.suffix in PICKLE_EXTS:
        return _read_pickle(path, device)
    raise CheckpointError(
        f"{path}: unsupported checkpoint extension {path.suffix!r}; expected one of "
        f"{SAFETENSORS_EXTS + PICKLE_EXTS} (convert other formats to .safetensors first)"
    )


def _read_pickle(path: Path, device) -> "OrderedDict[str, torch.Tensor]":
    head = _head(path, 2)
    if not (head.startswith(_ZIP_MAGIC[:2]) or head[:1] == bytes([_PICKLE_PROTO])):
        raise corrupt_pickle(path, None)  # text, junk, safetensors, empty: never handed to the unpickler
    try:
        try:
            obj = torch.load(str(path), map_location=device, weights_only=True, mmap=True)
        except RuntimeError as err:  # old (non-zip) serialization cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            obj = torch.load(str(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():  # a damaged pickle, not a refused one
            raise corrupt_pickle(path, err) from None
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it is a pickle that needs more than plain tensors to load (torch.load with "
            f"weights_only=True said: {str(err).splitlines()[0]}). Pickles can execute code; seedstory never unpickles "
            "arbitrary objects. Convert the file with a trusted tool to .safetensors, or obtain the official file."
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, IndexError, KeyError, zipfile.BadZipFile) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise corrupt_pickle(path, err) from None
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "module", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a mapping of tensor names to tensors, found {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entries that are not tensors: {bad[:5]}{' ...' if len(bad) > 5 else ''}")
    return OrderedDict(obj)


def read_keys_and_shapes(path: PathLike) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of a checkpoint without materialising tensors when possible (safetensors header)."""
    path = Path(path)
    if path.suffix in SAFETENSORS_EXTS:
        if not path.exists():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        with open_safetensors(path) as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    return {k: tuple(v.shape) for k, v in read_state_dict(path).items()}


# ---------------------------------------------------------------------------------------------------- kinds
_KIND_SIGNATURES: Dict[str, Tuple[str, ...]] = {
    "visual_tokenizer": ("conv1.weight", "transformer.resblocks.", "attn_pool."),
    "agent": ("llm.", "input_resampler.", "output_resampler."),
    "detokenizer": ("resampler.", "unet."),
    "llama": ("model.layers.", "model.embed_tokens.weight", "lm_head.weight"),
    "sdxl_single_file": ("model.diffusion_model.", "first_stage_model.", "conditioner."),
    "sdxl_unet": ("down_blocks.", "up_blocks.", "conv_in.weight"),
}


def detect_checkpoint_kind(keys: Iterable[str]) -> Optional[str]:
    """Guess which model a set of state-dict keys belongs to.

    Returns one of ``visual_tokenizer``, ``agent``, ``detokenizer``, ``llama``, ``sdxl_single_file``,
    ``sdxl_unet`` or ``None`` when nothing matches. The kind with the largest fraction of matching keys wins.
    """
    keys = list(keys)
    if not keys:
        return None
    best, best_score = None, 0.0
    for kind, prefixes in _KIND_SIGNATURES.items():
        hits = sum(1 for k in keys if any(k.startswith(p) for p in prefixes))
        score = hits / len(keys)
        if score > best_score:
            best, best_score = kind, score
    return best if best_score >= 0.5 else None


def require_kind(keys: Iterable[str], expected: str, source: PathLike) -> None:
    """Raise :class:`WrongCheckpointKindError` when ``keys`` clearly belong to another model than ``expected``."""
    keys = list(keys)
    kind = detect_checkpoint_kind(keys)
    if kind is not None and kind != expected:
        sample = ", ".join(keys[:3])
        raise WrongCheckpointKindError(
            f"{source} looks like a {kind} checkpoint (keys such as {sample}), but a {expected} checkpoint was "
            f"expected. Pick the {expected} file in this loader."
        )
    if kind is None:
        raise WrongCheckpointKindError(
            f"{source} is not recognised as a {expected} checkpoint (first keys: {', '.join(keys[:3]) or 'none'}). "
            "Check that you picked the right file."
        )


# ---------------------------------------------------------------------------------------------------- accounting
def group_by_prefix(keys: Iterable[str], depth: int = 3) -> Dict[str, int]:
    """Count keys per prefix, layer numbers folded into ``N`` (``llm.base_model.model`` -> count)."""
    counts: Dict[str, int] = defaultdict(int)
    for key in keys:
        parts = [("N" if p.isdigit() else p) for p in key.split(".")]
        counts[".".join(parts[:depth])] += 1
    return dict(sorted(counts.items()))


@dataclass
class LoadReport:
    """What a load did with every key. ``source`` names the file(s); keys are in the module's naming."""

    source: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    consumed: List[str] = field(default_factory=list)  # official keys checked and dropped on purpose (documented)
    notes: List[str] = field(default_factory=list)

    def summary(self, depth: int = 4) -> str:
        lines = [
            f"load report for {self.source}: {len(self.loaded)} loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.consumed)} checked-and-dropped"
        ]
        for title, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("checked-and-dropped", self.consumed),
        ):
            if keys:
                lines.append(f"  {title}:")
                lines += [f"    {prefix}: {n}" for prefix, n in group_by_prefix(keys, depth).items()]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "loaded": len(self.loaded),
            "missing": group_by_prefix(self.missing, 4),
            "unexpected": group_by_prefix(self.unexpected, 4),
            "consumed": group_by_prefix(self.consumed, 4),
            "notes": list(self.notes),
        }


def check_shapes(
    module_shapes: Mapping[str, Tuple[int, ...]], state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Raise :class:`CheckpointMismatchError` listing every key whose shape differs (file, key, expected, found)."""
    problems = []
    for key, tensor in state_dict.items():
        expected = module_shapes.get(key)
        if expected is not None and tuple(tensor.shape) != tuple(expected):
            problems.append(f"  {key}: expected shape {tuple(expected)}, found {tuple(tensor.shape)}")
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise CheckpointMismatchError(
            f"{source}: {len(problems)} tensor(s) do not fit the model built from the config:\n"
            + "\n".join(problems[:20])
            + more
            + "\nThe file was made for a model of another size; pick the matching config/preset or file."
        )


def apply_state_dict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    allowed_missing: Callable[[str], bool] = lambda key: False,
    strict_unexpected: bool = True,
    assign: Optional[bool] = None,
) -> LoadReport:
    """Load ``state_dict`` (already in the module's key naming) into ``module`` with full key accounting.

    Args:
        module: the target module; may live on the meta device (then tensors are assigned, not copied).
        state_dict: key -> tensor in the module's naming.
        source: file name(s) for messages.
        allowed_missing: predicate for module keys that may be absent (documented per loader); any other missing
            key raises.
        strict_unexpected: raise on keys the module does not have (default) instead of only reporting them.
        assign: force ``load_state_dict(assign=...)``; default: True when any parameter is on the meta device.

    Returns: :class:`LoadReport`.

    Raises:
        CheckpointMismatchError: shape mismatches, unexpected keys (when strict) or missing required keys.
    """
    own = module.state_dict(keep_vars=True)
    module_shapes = {k: tuple(v.shape) for k, v in own.items()}
    check_shapes(module_shapes, state_dict, source)
    unexpected = sorted(k for k in state_dict if k not in module_shapes)
    missing = sorted(k for k in module_shapes if k not in state_dict)
    required_missing = [k for k in missing if not allowed_missing(k)]
    if unexpected and strict_unexpected:
        raise CheckpointMismatchError(
            f"{source}: {len(unexpected)} key(s) have no place in the model: "
            + ", ".join(f"{p} ({n})" for p, n in group_by_prefix(unexpected, 4).items())
            + ". The file is for another model or another key naming."
        )
    if required_missing:
        raise CheckpointMismatchError(
            f"{source}: {len(required_missing)} required key(s) are missing: "
            + ", ".join(f"{p} ({n})" for p, n in group_by_prefix(required_missing, 4).items())
            + f" (e.g. {required_missing[0]}). Supply the file that holds them (e.g. the base weights)."
        )
    if assign is None:
        assign = any(t.is_meta for t in own.values())
    to_load = {k: v for k, v in state_dict.items() if k in module_shapes}
    if assign:
        # Keep the module's dtype: assign=True would otherwise adopt the file's dtype.
        to_load = {
            k: (v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v)
            for k, v in to_load.items()
        }
    module.load_state_dict(to_load, strict=False, assign=assign)
    return LoadReport(source=source, loaded=sorted(to_load), missing=missing, unexpected=unexpected)


# ---------------------------------------------------------------------------------------------------- key maps
@dataclass(frozen=True)
class KeyRule:
    """One regex rewrite from official key naming to this project's naming (recorded in converted files)."""

    official: str  # regex matched against the whole official key
    ours: str  # replacement (``re.sub`` syntax)
    note: str = ""


def apply_key_rules(keys: Iterable[str], rules: Sequence[KeyRule]) -> Dict[str, str]:
    """Map each official key through the first matching rule (identity when none matches)."""
    compiled = [(re.compile(r.official), r) for r in rules]
    mapping = {}
    for key in keys:
        for pattern, rule in compiled:
            if pattern.fullmatch(key):
                mapping[key] = pattern.sub(rule.ours, key)
                break
        else:
            mapping[key] = key
    return mapping


def meta_module_shapes(module: torch.nn.Module) -> Dict[str, Tuple[int, ...]]:
    """State-dict key -> shape of a (possibly meta-device) module."""
    return {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}

"""Loading the official SEED-Story agent checkpoint and the base Llama-2 weights into a :class:`SeedStoryAgent`.

Source facts: docs/reference.md §2.4 (checkpoint keys), §8 quirk 11 (peft 0.4.0 key naming); the golden
fixture README ("Key naming").

The model itself (:class:`~seedstory_core.agent.SeedStoryAgent`) has this project's module names, which differ
from an official checkpoint only where the peft / transformers versions differ. This module knows those
differences and the official files:

* :data:`AGENT_KEY_RULES` / :func:`official_to_ours_key_map` / :func:`ours_to_official_key` — the key maps
  (peft >= 0.7 ``<proj>.base_layer.weight`` vs peft 0.4.0 ``<proj>.weight``; the official per-layer RoPE
  ``inv_freq`` buffers vs transformers 5's single non-persistent table).
* :func:`official_state_dict` / :func:`official_trainable_keys` — an agent's weights in official naming (what
  the converter and ``SeedStoryAgent.save_pretrained(official_names=True)`` write), incl. the released
  trainable-only key set.
* :func:`load_official_state_dict` — load an agent state dict in official or our naming into an agent (built on
  the meta device or materialised), verifying every official ``inv_freq`` buffer against the model's RoPE table,
  and streaming the frozen base weights the released ``.bin`` lacks from a Llama-2-7b-hf folder
  (:func:`base_key_targets` says where each base key goes).

Files are read through :mod:`seedstory_core.checkpoints` (safe pickle loading, safetensors, kind detection).
:meth:`SeedStoryAgent.from_pretrained` reads a file or folder and calls :func:`load_official_state_dict`.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from .checkpoints import (
    CheckpointMismatchError,
    KeyRule,
    LoadReport,
    PICKLE_EXTS,
    SAFETENSORS_EXTS,
    apply_key_rules,
    apply_state_dict,
    check_shapes,
    group_by_prefix,
    open_safetensors,
    read_state_dict,
    require_kind,
    standard_checkpoint_file,
)

if TYPE_CHECKING:  # the agent module imports this one; the type is for annotations only
    from .agent import SeedStoryAgent

__all__ = [
    "AGENT_KEY_RULES",
    "OFFICIAL_TARGET_MODULES",
    "INV_FREQ_TOLERANCE",
    "AGENT_CHECKPOINT_HINT",
    "BASE_CHECKPOINT_HINT",
    "agent_key_rules",
    "official_to_ours_key_map",
    "ours_to_official_key",
    "official_state_dict",
    "official_trainable_keys",
    "load_official_state_dict",
    "base_key_targets",
]

OFFICIAL_TARGET_MODULES = ("q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "down_proj", "up_proj")
#: max |difference| between a file's RoPE ``inv_freq`` and the model's own table
INV_FREQ_TOLERANCE = 1e-6
#: which file provides the agent's trained tensors / its frozen base tensors (for error messages)
AGENT_CHECKPOINT_HINT = "the SEED-Story agent checkpoint (e.g. pretrained/seed_story/george_sft/pytorch_model.bin)"
BASE_CHECKPOINT_HINT = "the base Llama-2-7b-hf folder (pass base_llama=...)"

_LLM_PREFIX = "llm.base_model.model."  # peft PeftModelForCausalLM -> LoraModel -> LlamaForCausalLM
_DECODER_PREFIX = _LLM_PREFIX + "model."
_OUR_INV_FREQ_KEY = _DECODER_PREFIX + "rotary_emb.inv_freq"
_OFFICIAL_INV_FREQ_RE = re.compile(r"llm\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.rotary_emb\.inv_freq")
_BASE_INV_FREQ_RE = re.compile(r"model\.layers\.(\d+)\.self_attn\.rotary_emb\.inv_freq")


# ---------------------------------------------------------------------------------------------------- key maps
def agent_key_rules(target_modules: Sequence[str] = OFFICIAL_TARGET_MODULES) -> List[KeyRule]:
    """Official (peft 0.4.0 / ``modeling_llama_xformer``) -> our key rules for the agent
    (docs/reference.md §2.4, §8.11).

    Keys not matched by any rule are identical in both namings (LoRA A/B, norm copies, embeddings, lm_head,
    resamplers). The ``inv_freq`` rule maps every per-layer official buffer onto our single RoPE table; loaders
    verify those entries instead of storing them.
    """
    names = "|".join(re.escape(t) for t in target_modules)
    return [
        KeyRule(
            official=rf"(llm\.base_model\.model\.model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{names}))\.(weight|bias)",
            ours=r"\1.base_layer.\2",
            note=(
                "peft 0.4.0 keeps a LoRA-wrapped Linear's frozen weight as <proj>.weight; "
                "peft>=0.7 as <proj>.base_layer.weight"
            ),
        ),
        KeyRule(
            official=r"llm\.base_model\.model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
            ours=_OUR_INV_FREQ_KEY,
            note="per-layer persistent RoPE buffer of modeling_llama_xformer; transformers 5 keeps one non-persistent "
            "table. Checked against the model's table (|diff| <= 1e-6) and not stored",
        ),
    ]


AGENT_KEY_RULES: List[KeyRule] = agent_key_rules()


def official_to_ours_key_map(
    keys: Iterable[str], target_modules: Sequence[str] = OFFICIAL_TARGET_MODULES
) -> Dict[str, str]:
    """Map official agent keys to our keys with :func:`agent_key_rules` (our own names map to themselves)."""
    return apply_key_rules(keys, agent_key_rules(target_modules))


def ours_to_official_key(key: str) -> str:
    """Our agent key -> official (peft 0.4.0) key: drops peft's ``.base_layer`` level (docs/reference.md §2.4)."""
    return key.replace(".base_layer.", ".")


# ---------------------------------------------------------------------------------------------------- official naming
def official_state_dict(agent: "SeedStoryAgent", *, trainable_only: bool = False) -> "OrderedDict[str, torch.Tensor]":
    """Our weights in official ``ContinuousLVLM`` naming (peft 0.4.0; docs/reference.md §2.4), ready to save.

    Adds the per-layer ``self_attn.rotary_emb.inv_freq`` buffers (float32, regenerated from our RoPE table)
    and drops peft's ``.base_layer`` level. On a meta-built agent the tensors are meta (shapes only).

    Args:
        agent: a built :class:`~seedstory_core.agent.SeedStoryAgent` (meta or materialised).
        trainable_only: only what the released ``zero_to_fp32`` ``.bin`` presumably holds (docs/reference.md §2.4,
            ``manifest_agent_trainable.json``): the tensors trainable in the official run (LoRA A/B, both norm
            copies -- peft 0.4.0 leaves ``original_module`` trainable --, ``embed_tokens``, ``lm_head``, both
            resamplers except ``pos_embed``) plus the persistent ``inv_freq`` buffers.

    Returns: OrderedDict official key -> tensor (detached, sharing storage with the module, except inv_freq).
    """
    trainable = {n for n, p in agent.named_parameters() if p.requires_grad}
    inv = agent.rotary_emb.inv_freq
    inv = (
        inv.detach().float().clone() if not inv.is_meta else torch.empty(inv.shape, device="meta", dtype=torch.float32)
    )
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    n_layers = agent.config.llm.num_hidden_layers
    for key, tensor in agent.state_dict().items():
        if trainable_only and key not in trainable and ".original_module." not in key:
            continue
        out[ours_to_official_key(key)] = tensor
        # place each layer's inv_freq after its o_proj entries, as the official module order does
        m = re.fullmatch(
            r"llm\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.o_proj\.lora_B\.default\.weight", key
        )
        if m:
            out[f"{_DECODER_PREFIX}layers.{m.group(1)}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    missing_inv = [
        i for i in range(n_layers) if f"{_DECODER_PREFIX}layers.{i}.self_attn.rotary_emb.inv_freq" not in out
    ]
    for i in missing_inv:  # targets without o_proj: append at the end
        out[f"{_DECODER_PREFIX}layers.{i}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    return out


def official_trainable_keys(agent: "SeedStoryAgent") -> List[str]:
    """Official names of the tensors that are trainable in the official run (see :func:`official_state_dict`)."""
    return [k for k in official_state_dict(agent, trainable_only=True) if not k.endswith("rotary_emb.inv_freq")]


def _verify_inv_freq(agent: "SeedStoryAgent", key: str, value: torch.Tensor, source: str) -> None:
    ours = agent.expected_inv_freq()
    value = value.detach().to("cpu")
    if tuple(value.shape) != tuple(ours.shape):
        raise CheckpointMismatchError(
            f"{source}: {key}: expected shape {tuple(ours.shape)} (head_dim/2 RoPE frequencies), "
            f"found {tuple(value.shape)}. "
            "The file is for a model with another head size; pick the matching config."
        )
    if value.dtype in (torch.float16, torch.bfloat16):
        ours = ours.to(value.dtype)
    diff = (value.double() - ours.double()).abs().max().item() if value.numel() else 0.0
    if not diff <= INV_FREQ_TOLERANCE:
        raise CheckpointMismatchError(
            f"{source}: {key} differs from this model's RoPE inv_freq by {diff:.3g} (> {INV_FREQ_TOLERANCE}). "
            "The checkpoint was made with another RoPE base/head size "
            f"(config rope_theta={agent.config.llm.rope_theta}); "
            "pick the matching config."
        )


# ---------------------------------------------------------------------------------------------------- loading
def _load_items(
    agent: "SeedStoryAgent",
    items: Iterable[Tuple[str, torch.Tensor]],
    *,
    source: str,
    device,
    loaded: List[str],
    chunk_bytes: int = 512 * 2**20,
) -> None:
    """Cast each (our_key, tensor) to the module's dtype / target device and assign it, chunk by chunk."""
    own = agent.state_dict(keep_vars=True)
    chunk: Dict[str, torch.Tensor] = {}
    size = 0

    def flush():
        nonlocal chunk, size
        if chunk:
            rep = apply_state_dict(agent, chunk, source=source, allowed_missing=lambda k: True, strict_unexpected=True)
            loaded.extend(rep.loaded)
        chunk, size = {}, 0

    for key, tensor in items:
        target = own.get(key)
        if target is None:
            raise CheckpointMismatchError(
                f"{source}: key {key} has no place in the agent model (internal key-map error)."
            )
        dev = target.device if not target.is_meta else (device if device is not None else tensor.device)
        dt = target.dtype if (tensor.is_floating_point() and target.is_floating_point()) else tensor.dtype
        chunk[key] = tensor.to(device=dev, dtype=dt)
        size += chunk[key].numel() * chunk[key].element_size()
        if size >= chunk_bytes:
            flush()
    flush()


def load_official_state_dict(
    agent: "SeedStoryAgent",
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    base_llama=None,
    device=None,
) -> LoadReport:
    """Load an agent checkpoint in official (peft 0.4.0) or our naming, plus base LLaMA weights if needed.

    Accepts the full official state dict (856 keys at full size), the released trainable-only ``.bin``
    (``manifest_agent_trainable.json``: LoRA, norm copies, embeddings, lm_head, resamplers, inv_freq buffers),
    a file converted by ``python -m seedstory_core.convert agent`` or one written by
    :meth:`SeedStoryAgent.save_pretrained`.

    * Keys are mapped with :data:`AGENT_KEY_RULES`; shapes are checked against the official names
      (``CheckpointMismatchError`` names file, key, expected and found shape).
    * Every ``...rotary_emb.inv_freq`` entry is compared with the model's own RoPE table (raise beyond 1e-6;
      half-precision files are compared after rounding ours) and recorded in ``report.consumed``.
    * Frozen base weights missing from the file (``q_proj.weight`` ..., and norms / embeddings / lm_head if
      absent) come from ``base_llama``: a Llama-2-7b-hf folder or file (``model.safetensors(.index.json)`` or
      ``pytorch_model.bin(.index.json)``, keys ``model.*`` / ``lm_head.weight``), streamed shard by shard. Its
      norm weights fill both peft copies; its embed_tokens / lm_head (32000 rows officially) are used only if
      the agent file lacks them, and only when they already have ``vocab_size`` rows (the image-token rows
      exist only in the agent file).
    * A missing resampler ``pos_embed`` is recomputed (deterministic frozen sin-cos table; documented).

    Works on a meta-built agent (tensors are assigned, never copied: no second copy of the weights) and on a
    materialised one (values copied in place). Calls :meth:`SeedStoryAgent.materialize_constants` at the end.

    Args:
        agent: the :class:`~seedstory_core.agent.SeedStoryAgent` to fill, built from the matching config
            (``SeedStoryAgent.build(config, meta=True)`` avoids a second copy of the weights).
        state_dict: key -> tensor (official or our naming).
        source: file name for messages.
        base_llama: path of the base Llama weights (folder or file) or None.
        device: where tensors of a meta-built agent are placed (default: the tensors' own device).

    Returns: :class:`LoadReport` (our key names in loaded / missing; official inv_freq keys in consumed).

    Raises:
        WrongCheckpointKindError: the file is not an agent checkpoint (e.g. a ViT file).
        CheckpointMismatchError: shape mismatch, unknown keys, RoPE mismatch, or keys missing that no given
            file provides (the message names the file that would provide them).
    """
    keys = list(state_dict.keys())
    require_kind(keys, "agent", source)
    own = agent.state_dict(keep_vars=True)
    own_shapes = {k: tuple(v.shape) for k, v in own.items()}
    target_modules = tuple(agent.config.lora.target_modules)

    consumed: List[str] = []
    payload: Dict[str, torch.Tensor] = {}
    inv_keys = [k for k in keys if _OFFICIAL_INV_FREQ_RE.fullmatch(k) or k == _OUR_INV_FREQ_KEY]
    mapping = official_to_ours_key_map([k for k in keys if k not in set(inv_keys)], target_modules)
    for key in inv_keys:
        _verify_inv_freq(agent, key, state_dict[key], source)
        consumed.append(key)
    n_layers = agent.config.llm.num_hidden_layers
    bad_layers = [k for k in consumed if (m := _OFFICIAL_INV_FREQ_RE.fullmatch(k)) and int(m.group(1)) >= n_layers]
    if bad_layers:
        raise CheckpointMismatchError(
            f"{source}: {bad_layers[0]} belongs to a layer this {n_layers}-layer model does not have; "
            "pick the matching config."
        )
    # shape check in the file's own naming
    expected_by_file_key = {}
    for fk, ok in mapping.items():
        if ok in own_shapes:
            expected_by_file_key[fk] = own_shapes[ok]
    check_shapes(expected_by_file_key, {k: state_dict[k] for k in mapping}, source)
    unexpected = sorted(fk for fk, ok in mapping.items() if ok not in own_shapes)
    if unexpected:
        raise CheckpointMismatchError(
            f"{source}: {len(unexpected)} key(s) have no place in the agent built from the config: "
            + ", ".join(f"{p} ({n})" for p, n in group_by_prefix(unexpected, 5).items())
            + f" (e.g. {unexpected[0]}). The file was made for another LoRA/model layout; check the config."
        )
    dup = {}
    for fk, ok in mapping.items():
        if ok in dup:
            raise CheckpointMismatchError(
                f"{source}: keys {dup[ok]} and {fk} both map to {ok}; the file mixes two namings."
            )
        dup[ok] = fk
    for fk, ok in mapping.items():
        payload[ok] = state_dict[fk]

    missing = [k for k in own_shapes if k not in payload]
    pos_embed_missing = [k for k in missing if k.endswith("_resampler.pos_embed")]
    base_needed = [k for k in missing if k not in pos_embed_missing and _base_providable(k)]
    agent_only = [k for k in missing if k not in pos_embed_missing and k not in base_needed]
    if agent_only:
        raise CheckpointMismatchError(
            f"{source}: {len(agent_only)} agent tensor(s) are missing: "
            + ", ".join(
                f"{p} ({n})" for p, n in group_by_prefix([ours_to_official_key(k) for k in agent_only], 5).items()
            )
            + f" (e.g. {ours_to_official_key(agent_only[0])}). Only {AGENT_CHECKPOINT_HINT} provides them; "
            "the file is incomplete or for another LoRA config."
        )
    if base_needed and base_llama is None:
        raise CheckpointMismatchError(
            f"{source}: {len(base_needed)} frozen base LLaMA tensor(s) are missing: "
            + ", ".join(
                f"{p} ({n})" for p, n in group_by_prefix([ours_to_official_key(k) for k in base_needed], 5).items()
            )
            + f" (e.g. {ours_to_official_key(base_needed[0])}). The agent file holds only the trainable tensors "
            f"(docs/reference.md §2.4); they come from {BASE_CHECKPOINT_HINT}."
        )

    loaded: List[str] = []
    notes: List[str] = []
    if device is None:
        device = agent.loaded_device()
    _load_items(agent, payload.items(), source=source, device=device, loaded=loaded)
    sources = [str(source)]
    if base_needed:
        base_report = _load_base_llama(
            agent, base_llama, set(base_needed), device=device, loaded=loaded, consumed=consumed
        )
        notes.extend(base_report)
        sources.append(str(base_llama))
        still = sorted(set(base_needed) - set(loaded))
        if still:
            raise CheckpointMismatchError(
                f"{base_llama}: {len(still)} base tensor(s) still missing after reading the base LLaMA weights: "
                + ", ".join(
                    f"{p} ({n})" for p, n in group_by_prefix([ours_to_official_key(k) for k in still], 5).items()
                )
                + f" (e.g. {ours_to_official_key(still[0])}). Check that base_llama is the Llama-2-7b-hf the agent "
                f"was trained on, or use {AGENT_CHECKPOINT_HINT} that contains them."
            )
    elif base_llama is not None:
        notes.append(f"base_llama {base_llama} was not needed: the agent file is complete")
    if pos_embed_missing:
        for key in pos_embed_missing:
            res = agent.input_resampler if key.startswith("input_") else agent.output_resampler
            if not res.query.is_meta:
                res.reset_pos_embed()
        notes.append(
            "resampler pos_embed missing from the file: recomputed "
            "(frozen deterministic sin-cos table, docs/reference.md §2.3)"
        )
    agent.materialize_constants(device)
    if consumed:
        notes.append(f"{len(consumed)} RoPE inv_freq buffer(s) checked against the model's table and not stored")
    return LoadReport(
        source=" + ".join(sources),
        loaded=sorted(set(loaded)),
        missing=sorted(pos_embed_missing),
        unexpected=[],
        consumed=consumed,
        notes=notes,
    )


def _base_providable(key: str) -> bool:
    if not key.startswith(_LLM_PREFIX):
        return False
    return (
        key.endswith(".base_layer.weight")
        or key.endswith(".base_layer.bias")
        or ".original_module." in key
        or ".modules_to_save.default." in key
        or key in (_DECODER_PREFIX + "embed_tokens.weight", _LLM_PREFIX + "lm_head.weight")
    )


def base_key_targets(agent: "SeedStoryAgent", base_key: str, own_keys: Optional[Iterable[str]] = None) -> List[str]:
    """Where a key of a plain Llama checkpoint (``model.*`` / ``lm_head.weight``) goes in ``agent``.

    Returns our keys (empty list when it has no place): ``model.layers.i.self_attn.q_proj.weight`` ->
    ``llm.base_model.model.model.layers.i.self_attn.q_proj.base_layer.weight``; a norm weight -> both its
    ``original_module`` and ``modules_to_save.default`` copies; embeddings / lm_head -> themselves.
    """
    own = set(own_keys) if own_keys is not None else set(agent.state_dict(keep_vars=True))
    key = _LLM_PREFIX + base_key
    if key in own:
        return [key]
    stem, _, leaf = key.rpartition(".")
    if f"{stem}.base_layer.{leaf}" in own:
        return [f"{stem}.base_layer.{leaf}"]
    if f"{stem}.original_module.{leaf}" in own:
        return [f"{stem}.original_module.{leaf}", f"{stem}.modules_to_save.default.{leaf}"]
    return []


def _load_base_llama(
    agent: "SeedStoryAgent", base_llama, needed: set, *, device, loaded: List[str], consumed: List[str]
) -> List[str]:
    notes: List[str] = []
    shards, all_keys = _llama_shards(base_llama)
    require_kind(all_keys, "llama", base_llama)
    own = agent.state_dict(keep_vars=True)
    own_keys = set(own)
    used = 0
    superseded = 0
    for shard in shards:

        def items():
            nonlocal used, superseded
            for bkey, tensor in _iter_tensors(shard, device=device):
                if _BASE_INV_FREQ_RE.fullmatch(bkey):
                    _verify_inv_freq(agent, bkey, tensor, str(shard))
                    consumed.append(f"{base_llama}:{bkey}")
                    continue
                targets = base_key_targets(agent, bkey, own_keys)
                if not targets:
                    raise CheckpointMismatchError(
                        f"{shard}: key {bkey} has no place in the agent's LLaMA "
                        "(expected keys model.* / lm_head.weight "
                        "of a LlamaForCausalLM). Is base_llama a Llama-2-7b-hf folder?"
                    )
                wanted = [t for t in targets if t in needed]
                if not wanted:
                    superseded += 1
                    continue
                for tkey in wanted:
                    exp = tuple(own[tkey].shape)
                    if tuple(tensor.shape) != exp:
                        if (
                            tkey.endswith(("embed_tokens.weight", "lm_head.weight"))
                            and tensor.shape[1:] == exp[1:]
                            and tensor.shape[0] < exp[0]
                        ):
                            raise CheckpointMismatchError(
                                f"{shard}: {bkey} has {tensor.shape[0]} rows but the agent needs {exp[0]} "
                                "(base vocabulary + BOI/EOI/IMG tokens, docs/reference.md §2.1). "
                                f"The image-token rows exist only in {AGENT_CHECKPOINT_HINT}, "
                                f"which must contain {ours_to_official_key(tkey)}."
                            )
                        raise CheckpointMismatchError(
                            f"{shard}: {bkey} (-> {ours_to_official_key(tkey)}): expected shape {exp}, "
                            f"found {tuple(tensor.shape)}. "
                            "base_llama is a model of another size than the config."
                        )
                    used += 1
                    yield tkey, tensor

        _load_items(agent, items(), source=str(shard), device=device, loaded=loaded)
    notes.append(f"{used} frozen tensor(s) taken from base_llama {base_llama}")
    from_base_copies = sorted(k for k in needed if ".modules_to_save.default." in k and k in loaded)
    if from_base_copies:
        notes.append(
            f"{len(from_base_copies)} trained norm copies (modules_to_save) were absent from the agent file and were "
            "initialised from the base norms, as peft does before training: check that this is intended"
        )
    if superseded:
        notes.append(
            f"{superseded} base_llama tensor(s) superseded by the agent file "
            "(e.g. full-vocabulary embed_tokens / lm_head, norm copies)"
        )
    return notes


# ---------------------------------------------------------------------------------------------------- base llama files
def _llama_shards(path) -> Tuple[List[Path], List[str]]:
    """Shard files and all keys of a Llama checkpoint folder / file / index JSON."""
    path = Path(path)
    if path.is_dir():
        found = standard_checkpoint_file(path)
        if found is not None:
            return _llama_shards(found)
        raise FileNotFoundError(
            f"No Llama weights in {path}: expected model.safetensors(.index.json) or pytorch_model.bin(.index.json) "
            "(a Llama-2-7b-hf folder)."
        )
    if not path.exists():
        raise FileNotFoundError(f"Base Llama weights not found: {path}")
    if path.name.endswith(".index.json"):
        index = json.loads(path.read_text())
        weight_map = index.get("weight_map") or {}
        if not weight_map:
            raise CheckpointMismatchError(f"{path}: shard index has an empty 'weight_map'")
        shards = [path.parent / s for s in sorted(set(weight_map.values()))]
        for s in shards:
            if not s.exists():
                raise FileNotFoundError(f"{path} lists shard {s.name}, which is missing; download the complete folder.")
        return shards, list(weight_map)
    if path.suffix in SAFETENSORS_EXTS:
        with open_safetensors(path) as handle:  # a damaged file -> CorruptCheckpointError
            return [path], list(handle.keys())
    if path.suffix in PICKLE_EXTS:
        return [path], list(read_state_dict(path).keys())
    raise CheckpointMismatchError(
        f"{path}: unsupported base Llama file type {path.suffix!r}; expected .safetensors or .bin"
    )


def _iter_tensors(shard: Path, *, device=None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (key, tensor) of one shard, one tensor at a time for safetensors (pickles: via read_state_dict, mmap)."""
    if shard.suffix in SAFETENSORS_EXTS:
        with open_safetensors(shard, device=device if device is not None else "cpu") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
    else:
        sd = read_state_dict(shard, device=device if device is not None else "cpu")
        for key in list(sd.keys()):
            yield key, sd.pop(key)

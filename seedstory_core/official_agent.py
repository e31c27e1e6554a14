"""The official SEED-Story agent checkpoint and the base Llama-2 weights: key maps, checks and tensor streams for
:class:`~seedstory_core.agent.SeedStoryAgent`.

Source facts: docs/reference.md §2.4 (checkpoint keys), §8 quirk 11 (peft 0.4.0 key naming); the golden
fixture README ("Key naming").

The model itself (:class:`~seedstory_core.agent.SeedStoryAgent`) has this project's module names, which differ
from an official checkpoint only where the peft / transformers versions differ. This module knows those
differences and the official files.

Dependency direction: :mod:`seedstory_core.agent` imports this module, never the reverse. The agent's loaders
(``SeedStoryAgent.from_pretrained``, ``save_pretrained(official_names=True)``, ``build``) are the public API the
nodes, the training and the benchmarks call, so the agent has to reach this code; this module therefore never
touches the model class. It works on plain data: an :class:`AgentLayout` (the agent's key -> shape map, layer count,
LoRA targets and RoPE table) and tensors. It maps and checks keys and hands back tensors under our key names plus
the :class:`~seedstory_core.checkpoints.LoadReport`; the agent assigns them (onto its meta-built parameters, chunk
by chunk: no second copy of the weights) and materialises its constants
(:meth:`SeedStoryAgent.load_official_state_dict <seedstory_core.agent.SeedStoryAgent.load_official_state_dict>`).

* :data:`AGENT_KEY_RULES` / :func:`official_to_ours_key_map` / :func:`ours_to_official_key` — the key maps
  (peft >= 0.7 ``<proj>.base_layer.weight`` vs peft 0.4.0 ``<proj>.weight``; the official per-layer RoPE
  ``inv_freq`` buffers vs transformers 5's single non-persistent table).
* :func:`to_official_state_dict` — an agent state dict in official naming (what the converter and
  ``SeedStoryAgent.save_pretrained(official_names=True)`` write), incl. the released trainable-only key set.
* :func:`plan_official_load` -> :class:`OfficialAgentLoad` — check an agent state dict in official or our naming
  against an :class:`AgentLayout` (shapes, unknown keys, every official ``inv_freq`` buffer against the RoPE
  table, missing tensors and the file that provides them), then stream its tensors followed by the frozen base
  weights the released ``.bin`` lacks, read shard by shard from a Llama-2-7b-hf folder (:func:`base_key_targets`
  says where each base key goes).
* :func:`base_llama_shards` / :func:`iter_shard_tensors` — the base Llama files.

Files are read through :mod:`seedstory_core.checkpoints` (safe pickle loading, safetensors, kind detection).
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from .checkpoints import (
    CheckpointMismatchError,
    KeyRule,
    LoadReport,
    PICKLE_EXTS,
    SAFETENSORS_EXTS,
    apply_key_rules,
    check_shapes,
    group_by_prefix,
    open_safetensors,
    read_state_dict,
    require_kind,
    standard_checkpoint_file,
)

__all__ = [
    "AGENT_KEY_RULES",
    "OFFICIAL_TARGET_MODULES",
    "INV_FREQ_TOLERANCE",
    "AGENT_CHECKPOINT_HINT",
    "BASE_CHECKPOINT_HINT",
    "AgentLayout",
    "OfficialAgentLoad",
    "agent_key_rules",
    "official_to_ours_key_map",
    "ours_to_official_key",
    "to_official_state_dict",
    "verify_inv_freq",
    "plan_official_load",
    "base_key_targets",
    "base_llama_shards",
    "iter_shard_tensors",
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


@dataclass(frozen=True, eq=False)  # eq=False: a tensor field has no truth value to compare by
class AgentLayout:
    """What reading and writing official checkpoints needs to know about an agent: plain data, no module.

    Made by :meth:`SeedStoryAgent.checkpoint_layout <seedstory_core.agent.SeedStoryAgent.checkpoint_layout>`.

    Attributes:
        shapes: our state-dict key -> shape of every parameter and persistent buffer (of a meta-built or a
            materialised agent).
        num_layers: decoder layers (``config.llm.num_hidden_layers``).
        target_modules: the LoRA target projections (``config.lora.target_modules``).
        inv_freq: the RoPE inverse frequencies the config implies, (head_dim // 2,) float32 on the CPU.
        rope_theta: the config's RoPE base (named in messages).
    """

    shapes: Mapping[str, Tuple[int, ...]]
    num_layers: int
    target_modules: Tuple[str, ...]
    inv_freq: torch.Tensor
    rope_theta: float


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
def to_official_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    *,
    inv_freq: torch.Tensor,
    num_layers: int,
    trainable: Optional[Collection[str]] = None,
) -> "OrderedDict[str, torch.Tensor]":
    """An agent state dict (our naming) in official ``ContinuousLVLM`` naming (peft 0.4.0; docs/reference.md §2.4),
    ready to save.

    Adds the per-layer ``self_attn.rotary_emb.inv_freq`` buffers (float32, copies of ``inv_freq``) and drops peft's
    ``.base_layer`` level. Meta tensors stay meta (shapes only).

    Args:
        state_dict: our key -> tensor (``SeedStoryAgent.state_dict()``), in module order.
        inv_freq: the model's RoPE table (head_dim // 2,), any dtype / device (meta gives meta entries).
        num_layers: decoder layers (one ``inv_freq`` entry each).
        trainable: None for every tensor; else our names of the parameters that are trainable
            (``requires_grad``) and only what the released ``zero_to_fp32`` ``.bin`` presumably holds is kept
            (docs/reference.md §2.4, ``manifest_agent_trainable.json``): the tensors trainable in the official run
            (LoRA A/B, both norm copies -- peft 0.4.0 leaves ``original_module`` trainable --, ``embed_tokens``,
            ``lm_head``, both resamplers except ``pos_embed``) plus the persistent ``inv_freq`` buffers.

    Returns: OrderedDict official key -> tensor (the given tensors themselves, except the inv_freq copies).
    """
    inv = (
        inv_freq.detach().float().clone()
        if not inv_freq.is_meta
        else torch.empty(inv_freq.shape, device="meta", dtype=torch.float32)
    )
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for key, tensor in state_dict.items():
        if trainable is not None and key not in trainable and ".original_module." not in key:
            continue
        out[ours_to_official_key(key)] = tensor
        # place each layer's inv_freq after its o_proj entries, as the official module order does
        m = re.fullmatch(
            r"llm\.base_model\.model\.model\.layers\.(\d+)\.self_attn\.o_proj\.lora_B\.default\.weight", key
        )
        if m:
            out[f"{_DECODER_PREFIX}layers.{m.group(1)}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    missing_inv = [
        i for i in range(num_layers) if f"{_DECODER_PREFIX}layers.{i}.self_attn.rotary_emb.inv_freq" not in out
    ]
    for i in missing_inv:  # targets without o_proj: append at the end
        out[f"{_DECODER_PREFIX}layers.{i}.self_attn.rotary_emb.inv_freq"] = inv.clone()
    return out


def verify_inv_freq(layout: AgentLayout, key: str, value: torch.Tensor, source: str) -> None:
    """Check a file's RoPE ``inv_freq`` entry against the layout's table (docs/reference.md §2.4, §8.11).

    Half-precision values are compared after rounding ours to their dtype.

    Raises: CheckpointMismatchError (naming ``source`` and ``key``) on another shape (head size) or a difference
    above :data:`INV_FREQ_TOLERANCE` (RoPE base).
    """
    ours = layout.inv_freq
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
            f"(config rope_theta={layout.rope_theta}); "
            "pick the matching config."
        )


def _official_names(keys: Iterable[str], depth: int) -> str:
    return ", ".join(f"{p} ({n})" for p, n in group_by_prefix([ours_to_official_key(k) for k in keys], depth).items())


# ---------------------------------------------------------------------------------------------------- loading
def plan_official_load(
    state_dict: Mapping[str, torch.Tensor],
    layout: AgentLayout,
    *,
    source: str,
    base_llama=None,
) -> "OfficialAgentLoad":
    """Check an agent checkpoint in official (peft 0.4.0) or our naming against ``layout``; nothing is copied.

    Accepts the full official state dict (856 keys at full size), the released trainable-only ``.bin``
    (``manifest_agent_trainable.json``: LoRA, norm copies, embeddings, lm_head, resamplers, inv_freq buffers),
    a file converted by ``python -m seedstory_core.convert agent`` or one written by
    ``SeedStoryAgent.save_pretrained``.

    * Keys are mapped with :data:`AGENT_KEY_RULES`; shapes are checked against the official names
      (``CheckpointMismatchError`` names file, key, expected and found shape).
    * Every ``...rotary_emb.inv_freq`` entry is compared with the layout's RoPE table (:func:`verify_inv_freq`)
      and recorded in ``consumed``.
    * Frozen base weights missing from the file (``q_proj.weight`` ..., and norms / embeddings / lm_head if
      absent) must come from ``base_llama`` (see :meth:`OfficialAgentLoad.tensor_groups`).
    * A missing resampler ``pos_embed`` is allowed (a deterministic frozen sin-cos table the agent recomputes).

    Args:
        state_dict: key -> tensor (official or our naming).
        layout: the agent's :class:`AgentLayout` (built from the matching config).
        source: file name for messages.
        base_llama: path of the base Llama weights (folder or file) or None.

    Returns: :class:`OfficialAgentLoad` (our key -> file tensor, the keys the base weights provide).

    Raises:
        WrongCheckpointKindError: the file is not an agent checkpoint (e.g. a ViT file).
        CheckpointMismatchError: shape mismatch, unknown keys, two namings mixed, RoPE mismatch, or keys missing
            that no given file provides (the message names the file that would provide them).
    """
    keys = list(state_dict.keys())
    require_kind(keys, "agent", source)
    own_shapes = layout.shapes

    consumed: List[str] = []
    payload: Dict[str, torch.Tensor] = {}
    inv_keys = [k for k in keys if _OFFICIAL_INV_FREQ_RE.fullmatch(k) or k == _OUR_INV_FREQ_KEY]
    mapping = official_to_ours_key_map([k for k in keys if k not in set(inv_keys)], layout.target_modules)
    for key in inv_keys:
        verify_inv_freq(layout, key, state_dict[key], source)
        consumed.append(key)
    n_layers = layout.num_layers
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
            + _official_names(agent_only, 5)
            + f" (e.g. {ours_to_official_key(agent_only[0])}). Only {AGENT_CHECKPOINT_HINT} provides them; "
            "the file is incomplete or for another LoRA config."
        )
    if base_needed and base_llama is None:
        raise CheckpointMismatchError(
            f"{source}: {len(base_needed)} frozen base LLaMA tensor(s) are missing: "
            + _official_names(base_needed, 5)
            + f" (e.g. {ours_to_official_key(base_needed[0])}). The agent file holds only the trainable tensors "
            f"(docs/reference.md §2.4); they come from {BASE_CHECKPOINT_HINT}."
        )
    return OfficialAgentLoad(
        layout,
        source=str(source),
        base_llama=base_llama,
        payload=payload,
        base_needed=base_needed,
        pos_embed_missing=pos_embed_missing,
        consumed=consumed,
    )


class OfficialAgentLoad:
    """A checked plan for filling an agent from an agent checkpoint plus, where needed, the base Llama weights.

    Made by :func:`plan_official_load`. The agent assigns the tensors of :meth:`tensor_groups` (our key names;
    the agent file first, then each base shard, read while it is consumed) and then asks :meth:`report` for the
    :class:`~seedstory_core.checkpoints.LoadReport` (docs/reference.md §2.4).

    Attributes:
        layout: the agent's :class:`AgentLayout`.
        source: the agent file (for messages).
        base_llama: the base Llama folder / file, or None.
        payload: our key -> tensor from the agent file (the file's own tensors: nothing is copied).
        base_needed: our keys that come from ``base_llama``.
        pos_embed_missing: resampler ``pos_embed`` keys absent from the file (the agent recomputes them).
        consumed: ``inv_freq`` keys checked against the RoPE table and not stored (base ones as ``path:key``).
    """

    def __init__(
        self,
        layout: AgentLayout,
        *,
        source: str,
        base_llama,
        payload: Dict[str, torch.Tensor],
        base_needed: List[str],
        pos_embed_missing: List[str],
        consumed: List[str],
    ):
        self.layout = layout
        self.source = source
        self.base_llama = base_llama
        self.payload = payload
        self.base_needed = base_needed
        self.pos_embed_missing = pos_embed_missing
        self.consumed = consumed
        self._base_used = 0
        self._base_superseded = 0

    def tensor_groups(self, device=None) -> Iterator[Tuple[str, Iterable[Tuple[str, torch.Tensor]]]]:
        """``(source, items)`` pairs to assign in this order; ``items`` yields (our key, tensor).

        First the agent file's tensors (as stored), then, when base weights are needed, one group per shard of
        ``base_llama`` (``model.safetensors(.index.json)`` or ``pytorch_model.bin(.index.json)``, keys ``model.*`` /
        ``lm_head.weight``), read one tensor at a time onto ``device`` (default: the CPU) while it is consumed:
        assign each group before taking the next. A base norm weight fills both peft copies; the base
        embed_tokens / lm_head (32000 rows officially) are used only if the agent file lacks them, and only when
        they already have ``vocab_size`` rows (the image-token rows exist only in the agent file); base tensors the
        agent file already holds are skipped (counted as superseded). Base ``inv_freq`` buffers are verified
        (:func:`verify_inv_freq`) and added to :attr:`consumed`.

        Raises (while iterating): FileNotFoundError / CorruptCheckpointError for missing or damaged base files,
        WrongCheckpointKindError when ``base_llama`` is not a Llama checkpoint, CheckpointMismatchError for base
        keys with no place in the agent, wrong shapes, too few vocabulary rows or a RoPE mismatch.
        """
        yield self.source, self.payload.items()
        if not self.base_needed:
            return
        shards, all_keys = base_llama_shards(self.base_llama)
        require_kind(all_keys, "llama", self.base_llama)
        needed = set(self.base_needed)
        for shard in shards:
            yield str(shard), self._base_items(shard, needed, device)

    def _base_items(self, shard: Path, needed: set, device) -> Iterator[Tuple[str, torch.Tensor]]:
        own = self.layout.shapes
        for bkey, tensor in iter_shard_tensors(shard, device=device):
            if _BASE_INV_FREQ_RE.fullmatch(bkey):
                verify_inv_freq(self.layout, bkey, tensor, str(shard))
                self.consumed.append(f"{self.base_llama}:{bkey}")
                continue
            targets = base_key_targets(bkey, own)
            if not targets:
                raise CheckpointMismatchError(
                    f"{shard}: key {bkey} has no place in the agent's LLaMA "
                    "(expected keys model.* / lm_head.weight "
                    "of a LlamaForCausalLM). Is base_llama a Llama-2-7b-hf folder?"
                )
            wanted = [t for t in targets if t in needed]
            if not wanted:
                self._base_superseded += 1
                continue
            for tkey in wanted:
                exp = tuple(own[tkey])
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
                self._base_used += 1
                yield tkey, tensor

    def report(self, loaded: Sequence[str]) -> LoadReport:
        """The :class:`LoadReport` once every group of :meth:`tensor_groups` is assigned.

        Args:
            loaded: our keys that were assigned.

        Returns: the report (our key names in loaded / missing -- the recomputed ``pos_embed`` --; ``inv_freq``
        keys in consumed; notes on the base weights, pos_embed and RoPE).

        Raises: CheckpointMismatchError when base tensors are still missing after reading ``base_llama``.
        """
        notes: List[str] = []
        sources = [self.source]
        if self.base_needed:
            notes.append(f"{self._base_used} frozen tensor(s) taken from base_llama {self.base_llama}")
            loaded_set = set(loaded)
            from_base_copies = sorted(
                k for k in self.base_needed if ".modules_to_save.default." in k and k in loaded_set
            )
            if from_base_copies:
                notes.append(
                    f"{len(from_base_copies)} trained norm copies (modules_to_save) were absent from the agent file "
                    "and were initialised from the base norms, as peft does before training: check that this is "
                    "intended"
                )
            if self._base_superseded:
                notes.append(
                    f"{self._base_superseded} base_llama tensor(s) superseded by the agent file "
                    "(e.g. full-vocabulary embed_tokens / lm_head, norm copies)"
                )
            sources.append(str(self.base_llama))
            still = sorted(set(self.base_needed) - loaded_set)
            if still:
                raise CheckpointMismatchError(
                    f"{self.base_llama}: {len(still)} base tensor(s) still missing after reading the base LLaMA "
                    "weights: "
                    + _official_names(still, 5)
                    + f" (e.g. {ours_to_official_key(still[0])}). Check that base_llama is the Llama-2-7b-hf the "
                    f"agent was trained on, or use {AGENT_CHECKPOINT_HINT} that contains them."
                )
        elif self.base_llama is not None:
            notes.append(f"base_llama {self.base_llama} was not needed: the agent file is complete")
        if self.pos_embed_missing:
            notes.append(
                "resampler pos_embed missing from the file: recomputed "
                "(frozen deterministic sin-cos table, docs/reference.md §2.3)"
            )
        if self.consumed:
            notes.append(
                f"{len(self.consumed)} RoPE inv_freq buffer(s) checked against the model's table and not stored"
            )
        return LoadReport(
            source=" + ".join(sources),
            loaded=sorted(set(loaded)),
            missing=sorted(self.pos_embed_missing),
            unexpected=[],
            consumed=self.consumed,
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


def base_key_targets(base_key: str, own_keys: Collection[str]) -> List[str]:
    """Where a key of a plain Llama checkpoint (``model.*`` / ``lm_head.weight``) goes in the agent.

    Args:
        base_key: the Llama checkpoint's key.
        own_keys: the agent's state-dict keys (e.g. :attr:`AgentLayout.shapes`; a set or mapping is fastest).

    Returns our keys (empty list when it has no place): ``model.layers.i.self_attn.q_proj.weight`` ->
    ``llm.base_model.model.model.layers.i.self_attn.q_proj.base_layer.weight``; a norm weight -> both its
    ``original_module`` and ``modules_to_save.default`` copies; embeddings / lm_head -> themselves.
    """
    own = own_keys
    key = _LLM_PREFIX + base_key
    if key in own:
        return [key]
    stem, _, leaf = key.rpartition(".")
    if f"{stem}.base_layer.{leaf}" in own:
        return [f"{stem}.base_layer.{leaf}"]
    if f"{stem}.original_module.{leaf}" in own:
        return [f"{stem}.original_module.{leaf}", f"{stem}.modules_to_save.default.{leaf}"]
    return []


# ---------------------------------------------------------------------------------------------------- base llama files
def base_llama_shards(path) -> Tuple[List[Path], List[str]]:
    """Shard files and all keys of a Llama checkpoint folder / file / index JSON (the base Llama-2-7b-hf weights).

    Args:
        path: a folder holding ``model.safetensors(.index.json)`` or ``pytorch_model.bin(.index.json)``, one of
            those files, or a shard index JSON.

    Returns: (shard paths in name order, every key of the checkpoint).

    Raises:
        FileNotFoundError: no weights in the folder, a missing file or a shard the index lists.
        CorruptCheckpointError: a damaged safetensors / pickle file.
        CheckpointMismatchError: an index without a ``weight_map`` or an unsupported file type.
    """
    path = Path(path)
    if path.is_dir():
        found = standard_checkpoint_file(path)
        if found is not None:
            return base_llama_shards(found)
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


def iter_shard_tensors(shard: Path, *, device=None) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield (key, tensor) of one checkpoint shard onto ``device`` (default: the CPU): one tensor at a time for
    safetensors; pickles are read with :func:`~seedstory_core.checkpoints.read_state_dict` (``weights_only``,
    memory-mapped) and released entry by entry.

    Raises: CorruptCheckpointError for a damaged file; UnsafeCheckpointError for a pickle that would run code.
    """
    if shard.suffix in SAFETENSORS_EXTS:
        with open_safetensors(shard, device=device if device is not None else "cpu") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)
    else:
        sd = read_state_dict(shard, device=device if device is not None else "cpu")
        for key in list(sd.keys()):
            yield key, sd.pop(key)

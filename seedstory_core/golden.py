"""Golden parity CLI: run this project's modules on official test vectors and compare.

``python -m seedstory_core.golden run FIXTURE_DIR OUT_DIR`` — for every fixture in FIXTURE_DIR (a
``<name>.json`` sidecar + ``<name>.safetensors`` in the format of docs/reference.md §10), build this project's module
from the sidecar, load the fixture's state dict (official key names, mapped through the documented key maps),
run its ``input.*`` tensors and write ``OUT_DIR/<name>.safetensors`` holding ``output.*`` tensors under the
fixture's own names. ``output.*`` tensors of the fixture are never read by ``run``.

``python -m seedstory_core.golden check FIXTURE_DIR [--out OUT_DIR]`` — run, then compare each produced output with
the fixture's: floats with ``torch.allclose(rtol, atol)`` (the sidecar's ``tolerance.recommended_rtol/atol``,
default 1e-4 / 1e-5), integers and booleans exactly. Prints the max abs error per output and exits 1 when any
output is outside tolerance or missing (2 on unusable input).

Fixture kinds (``fixture`` field of the sidecar): ``vit``, ``resampler_in``, ``resampler_out``,
``detok_resampler``, ``agent`` (forward losses and the official greedy ``generate`` through the story engine's
decoding primitives). Sidecars without tensors (``sink_ranges``) are skipped by ``run``.

This module holds every golden-parity adapter (what maps the official modules' test vectors onto ours): the ViT
(:func:`golden_vit`, :func:`vit_config_from_constructor_kwargs`), the de-tokenizer resampler
(:func:`golden_detok_resampler`), the agent resamplers (:func:`run_resampler`) and everything that exists only for
agent parity: building and loading an agent from a golden sidecar (:func:`agent_config_from_golden_meta`,
:func:`load_golden_agent`), its ``forward`` case (:func:`golden_agent_forward`) and the official greedy
``generate`` (:func:`official_generate`, on the story engine's decoding primitives of
:mod:`seedstory_core.generation`). It imports the model modules; they never import it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .agent import SeedStoryAgent
from .cache import CachePolicy
from .checkpoints import CheckpointMismatchError
from .config import (
    AgentConfig,
    DetokenizerResamplerConfig,
    ImageTokenSettings,
    LlamaSettings,
    LoraSettings,
    ResamplerConfig,
    VisualTokenizerConfig,
)
from .detok_resampler import ResamplerXLV2
from .generation import ImageTokenRule, forward_chunk, logits_at, new_cache
from .resampler import QwenResampler
from .tokens import ImageTokens, TokenKind
from .visual_tokenizer import QwenVisualTokenizer

Tensors = Dict[str, torch.Tensor]


# ---------------------------------------------------------------------------------------------------- agent fixtures
def agent_config_from_golden_meta(meta: Mapping[str, Any]) -> AgentConfig:
    """:class:`AgentConfig` from a golden ``agent_*.json`` sidecar (official constructor arguments).

    Reads ``llama_config`` (official ``LlamaConfig`` names; ``vocab_size`` after the resize), ``lora_config``,
    ``input_resampler``, ``output_resampler`` from ``meta['constructor_kwargs']`` if present, else from ``meta``.
    LoRA dropout is taken from the JSON.

    Raises: KeyError naming a missing section; ValueError for settings this implementation does not support
    (non-silu activation, tied embeddings, RoPE scaling, LoRA bias, attention bias).
    """
    src = meta.get("constructor_kwargs", meta)
    for section in ("llama_config", "lora_config", "input_resampler", "output_resampler"):
        if section not in src:
            raise KeyError(
                f"golden agent meta has no '{section}' section "
                f"(looked in {'constructor_kwargs' if 'constructor_kwargs' in meta else 'the top level'})"
            )
    llama = dict(src["llama_config"])
    if llama.get("hidden_act", "silu") != "silu":
        raise ValueError(f"llama_config.hidden_act={llama['hidden_act']!r}; only silu (Llama-2) is supported")
    if llama.get("tie_word_embeddings", False):
        raise ValueError(
            "llama_config.tie_word_embeddings=True; the official agent has an untied lm_head (docs/reference.md §2.2)"
        )
    if llama.get("rope_scaling") not in (None, {}):
        raise ValueError(f"llama_config.rope_scaling={llama['rope_scaling']!r}; only plain RoPE is supported")
    if llama.get("attention_bias", False) or llama.get("mlp_bias", False):
        raise ValueError("llama_config has attention/mlp bias; Llama-2 has none")
    fields = {f for f in LlamaSettings.__dataclass_fields__}
    kwargs = {k: v for k, v in llama.items() if k in fields}
    # the official modelling file ignores num_key_value_heads (no GQA): k/v have num_attention_heads heads
    kwargs["num_key_value_heads"] = kwargs.get("num_attention_heads", LlamaSettings.num_attention_heads)
    if "rope_theta" not in kwargs and isinstance(llama.get("rope_parameters"), Mapping):
        kwargs["rope_theta"] = float(llama["rope_parameters"].get("rope_theta", 10000.0))
    if kwargs.get("pad_token_id") is None:
        kwargs.pop("pad_token_id", None)
    llm = LlamaSettings(**kwargs)
    lora_dict = dict(src["lora_config"])
    if lora_dict.get("bias", "none") != "none":
        raise ValueError(f"lora_config.bias={lora_dict['bias']!r}; the official LoRA uses bias='none'")
    lora = LoraSettings.from_dict(
        {k: v for k, v in lora_dict.items() if k in LoraSettings.__dataclass_fields__ or k in ("task_type", "bias")}
    )
    in_res = ResamplerConfig.from_dict(src["input_resampler"])
    out_res = ResamplerConfig.from_dict(src["output_resampler"])
    return AgentConfig(
        llm=llm,
        lora=lora,
        input_resampler=in_res,
        output_resampler=out_res,
        image_tokens=ImageTokenSettings(num_img_tokens=in_res.num_queries),
        lm_loss_scale=float(src.get("lm_loss_scale", 1.0)),
        rec_loss_scale=float(src.get("rec_loss_scale", 1.0)),
    )


def build_agent_from_golden_meta(meta: Mapping[str, Any]) -> SeedStoryAgent:
    """Meta-device :class:`SeedStoryAgent` (float32) for a golden sidecar; load it with :func:`load_golden_agent`."""
    return SeedStoryAgent.build(agent_config_from_golden_meta(meta), meta=True, dtype=torch.float32)


def _strip_fixture_keys(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in state_dict.items() if not k.startswith(("input.", "output."))}


def load_golden_agent(
    meta: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *, device=None
) -> SeedStoryAgent:
    """Build the agent for a golden sidecar and load the fixture's official-named weights strictly.

    ``state_dict`` may still contain the fixture's ``input.*`` / ``output.*`` entries (they are dropped).
    Strict: every model tensor must come from the file (0 missing, pos_embed included) and no key may be
    unexpected. Returns the agent in eval mode, float32.

    Raises: CheckpointMismatchError when the fixture does not load strictly.
    """
    agent = build_agent_from_golden_meta(meta)
    sd = _strip_fixture_keys(state_dict)
    if device is not None:
        sd = {k: v.to(device) for k, v in sd.items()}
    report = agent.load_official_state_dict(sd, source="golden agent fixture")
    if report.missing or report.unexpected:
        raise CheckpointMismatchError(f"golden agent fixture did not load strictly:\n{report.summary()}")
    agent.eval()
    return agent


GOLDEN_FORWARD_INPUTS = (
    "input_ids",
    "attention_mask",
    "labels",
    "image_embeds",
    "embeds_gen_mask",
    "embeds_cmp_mask",
    "ids_gen_mask",
    "ids_cmp_mask",
)


def golden_agent_forward(
    meta: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """Run a golden agent fixture's ``forward`` case with this implementation (README "agent forward").

    Args:
        meta: the fixture's JSON sidecar.
        state_dict: the fixture's official-named tensors (``input.*`` / ``output.*`` entries are ignored).
        inputs: ``'forward.<name>'`` -> tensor (the ``input.`` prefix stripped; the prefixed form is accepted too)
            for input_ids, attention_mask, labels, image_embeds, embeds_gen_mask, embeds_cmp_mask, ids_gen_mask,
            ids_cmp_mask.

    Returns: ``forward.lm_loss``, ``forward.rec_loss``, ``forward.total_loss``, ``forward.recon_image_embeds``,
    ``forward.intermediate.image_embeds_lm``, ``forward.intermediate.logits``,
    ``forward.intermediate.last_hidden_state`` (float32, CPU, detached).

    Raises: KeyError naming a missing input; CheckpointMismatchError when the weights do not load strictly.
    """
    agent = load_golden_agent(meta, state_dict)
    kwargs = {}
    for name in GOLDEN_FORWARD_INPUTS:
        for key in (f"forward.{name}", f"input.forward.{name}"):
            if key in inputs:
                kwargs[name] = inputs[key]
                break
        else:
            raise KeyError(f"golden agent inputs lack 'forward.{name}' (have: {sorted(inputs)[:12]})")
    with torch.no_grad():
        out = agent(**kwargs, return_recon_image_embeds=True)

    def f(t):
        return None if t is None else t.detach().float().cpu()

    return {
        "forward.lm_loss": f(out["lm_loss"]),
        "forward.rec_loss": f(out["rec_loss"]),
        "forward.total_loss": f(out["total_loss"]),
        "forward.recon_image_embeds": f(out["recon_image_embeds"]),
        "forward.intermediate.image_embeds_lm": f(out["image_embeds_lm"]),
        "forward.intermediate.logits": f(out["logits"]),
        "forward.intermediate.last_hidden_state": f(out["last_hidden_state"]),
    }


def kinds_from_ids(ids: Sequence[int], image: ImageTokens, bos_id: int) -> List[int]:
    """TokenKind of each id (BOS, BOI, IMG, EOI, else TEXT)."""
    img = set(image.img)
    out = []
    for i, t in enumerate(ids):
        t = int(t)
        if t == bos_id and i == 0:
            out.append(TokenKind.BOS)
        elif t == image.boi:
            out.append(TokenKind.BOI)
        elif t == image.eoi:
            out.append(TokenKind.EOI)
        elif t in img:
            out.append(TokenKind.IMG)
        else:
            out.append(TokenKind.TEXT)
    return out


@torch.no_grad()
def official_generate(
    agent,
    input_ids: torch.Tensor,
    image_embeds: Optional[torch.Tensor],
    ids_cmp_mask: Optional[torch.Tensor],
    *,
    image: ImageTokens,
    bos_id: int,
    eos_id: int,
    max_new_tokens: int,
    one_pass: bool = True,
) -> Dict[str, torch.Tensor]:
    """The official greedy ``ContinuousLVLM.generate`` (docs/reference.md §2.6) on the engine's primitives.

    Args:
        input_ids: (1, L) prompt ids (e.g. ``[BOS] caption <img> IMG... </img>``).
        image_embeds: (N, T, D) ViT-space features of the prompt's input images (or None).
        ids_cmp_mask: (1, L) bool, True at the prompt's input IMG positions.
        one_pass: process the forced [IMG..., EOI] run in one forward (True) or token by token (False).

    Returns ``generate_ids`` (n,) int64, ``has_img_output`` bool scalar, ``num_gen_imgs`` int64 scalar,
    ``img_gen_feat`` (1, T, D) (zeros-shaped empty when no image), ``img_hidden_states`` (1, n_img, D),
    ``step_scores`` (n, V) processed scores of every step.
    """
    device = agent.lm_head.weight.device
    rule = ImageTokenRule(image, suppress="official")
    cache = new_cache(agent, CachePolicy(kind="dense"))
    ids = input_ids[0].tolist()
    embeds = agent.embed_inputs(input_ids.to(device), image_embeds, ids_cmp_mask)
    hidden = forward_chunk(agent, cache, embeds, kinds_from_ids(ids, image, bos_id))
    logits = logits_at(agent, hidden[0, -1])
    last = ids[-1]
    generated: List[int] = []
    scores_list: List[torch.Tensor] = []
    hidden_by_input: List[torch.Tensor] = []  # hidden state whose INPUT is generated token j
    n_img = len(image.img)
    while len(generated) < max_new_tokens:
        scores = rule(last, logits)
        token = int(scores.argmax())
        generated.append(token)
        scores_list.append(scores)
        if token == eos_id or len(generated) >= max_new_tokens:
            break
        if token == image.boi and one_pass:
            # The run after BOI is fixed: IMG_0..IMG_{n-1}, EOI (docs/reference.md §2.6). Feed it in one forward:
            # BOI and the forced tokens (the last one only when generation continues after it).
            forced = [*image.img, image.eoi][: max_new_tokens - len(generated)]
            continues = len(generated) + len(forced) < max_new_tokens
            feed = [token] + (forced if continues else forced[:-1])
            kinds = kinds_from_ids([-1] + feed, image, bos_id)[1:]
            emb = agent.embed_tokens(torch.tensor([feed], dtype=torch.long, device=device))
            h = forward_chunk(agent, cache, emb, kinds)
            step_logits = logits_at(agent, h[0])
            prev = token
            for j, tok in enumerate(forced):
                scores_list.append(rule(prev, step_logits[j]))
                generated.append(tok)
                prev = tok
            hidden_by_input.extend(h[0, i] for i in range(len(feed)))
            if not continues:
                break
            logits = step_logits[len(forced)]
            last = forced[-1]
            continue
        emb = agent.embed_tokens(torch.tensor([[token]], dtype=torch.long, device=device))
        h = forward_chunk(agent, cache, emb, kinds_from_ids([-1, token], image, bos_id)[1:])
        hidden_by_input.append(h[0, 0])
        logits = logits_at(agent, h[0, -1])
        last = token
    gen = torch.tensor(generated, dtype=torch.long)
    eoi_positions = [i for i, t in enumerate(generated) if t == image.eoi]
    out = {
        "generate_ids": gen,
        "step_scores": torch.stack(scores_list) if scores_list else torch.empty(0),
        "has_img_output": torch.tensor(bool(eoi_positions)),
        "num_gen_imgs": torch.tensor(1 if eoi_positions else 0, dtype=torch.long),
    }
    if eoi_positions:
        e = eoi_positions[-1]
        img_hidden = torch.stack(hidden_by_input[e - n_img : e]).unsqueeze(0)
        out["img_hidden_states"] = img_hidden
        out["img_gen_feat"] = agent.output_resampler(img_hidden)
    return out


def _split(tensors: Tensors) -> Tuple[Tensors, Tensors]:
    state = {k: v for k, v in tensors.items() if not k.startswith(("input.", "output."))}
    inputs = {k[len("input.") :]: v for k, v in tensors.items() if k.startswith("input.")}
    return state, inputs


def run_resampler(meta: dict, state: Tensors, inputs: Tensors) -> Tensors:
    """resampler_in / resampler_out: ``y = QwenResampler(x)`` (docs/reference.md §2.3)."""
    kwargs = {
        k: v for k, v in meta["constructor_kwargs"].items() if k in ("grid_size", "embed_dim", "num_heads", "kv_dim")
    }
    module = QwenResampler(ResamplerConfig(**kwargs)).float().eval()
    module.load_state_dict(state, strict=True)
    with torch.no_grad():
        return {"y": module(inputs["x"].float())}


# ---------------------------------------------------------------------------------------------------- ViT fixtures
#: The outputs of a ``vit`` fixture (names without ``output.``), as :func:`golden_vit` returns them.
GOLDEN_VIT_OUTPUT_NAMES = (
    "features",
    "intermediate.ln_pre_out",
    "intermediate.transformer_out",
    "intermediate.attn_pool_out",
)


def vit_config_from_constructor_kwargs(kwargs: Mapping, layernorm_eps: Optional[float] = None) -> VisualTokenizerConfig:
    """Map official ``VisionTransformerWithAttnPool`` constructor arguments onto a :class:`VisualTokenizerConfig`.

    Keys that are not config fields (e.g. the stray ``image_start_id"`` of the official YAML, docs/reference.md §1) are
    ignored.
    ``layernorm_eps`` (when given and not in ``kwargs``) sets the LayerNorm eps; otherwise the config default 1e-6.
    Raises ``ValueError`` when ``kwargs`` is not a mapping.
    """
    if not isinstance(kwargs, Mapping):
        raise ValueError(
            "constructor_kwargs must be a dict of VisionTransformerWithAttnPool arguments, "
            f"found {type(kwargs).__name__}."
        )
    names = {f.name for f in dataclasses.fields(VisualTokenizerConfig)}
    picked = {k: v for k, v in kwargs.items() if k in names}
    if layernorm_eps is not None and "layernorm_eps" not in picked:
        picked["layernorm_eps"] = float(layernorm_eps)
    return VisualTokenizerConfig(**picked)


def golden_vit(
    meta: dict, state_dict: Dict[str, torch.Tensor], inputs: Dict[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """Run a ``vit`` golden fixture through :class:`QwenVisualTokenizer` (docs/reference.md §10, §1).

    Args:
        meta: the fixture JSON; ``meta['constructor_kwargs']`` gives the sizes (non-config keys ignored) and
            ``meta['derived']['vit_layernorm_eps']`` (if present) the LayerNorm eps.
        state_dict: the fixture's weights (keys without ``input.``/``output.``), loaded with ``strict=True``.
        inputs: the fixture inputs without the ``input.`` prefix; needs ``'pixel_values'`` (B, 3, S, S) float.

    Returns:
        dict of float32 CPU tensors ``'features'``, ``'intermediate.ln_pre_out'``,
        ``'intermediate.transformer_out'``, ``'intermediate.attn_pool_out'`` (fixture names without ``output.``).

    Raises:
        KeyError: ``constructor_kwargs`` or ``pixel_values`` missing. RuntimeError: the state dict does not load
        strictly (missing / unexpected keys or wrong shapes).
    """
    if "constructor_kwargs" not in meta:
        raise KeyError(f"golden_vit: the fixture JSON has no 'constructor_kwargs' (keys found: {sorted(meta)}).")
    if "pixel_values" not in inputs:
        raise KeyError(
            f"golden_vit: inputs need 'pixel_values' (found {sorted(inputs)}); strip the 'input.' prefix first."
        )
    eps = (meta.get("derived") or {}).get("vit_layernorm_eps")
    config = vit_config_from_constructor_kwargs(meta["constructor_kwargs"], layernorm_eps=eps)
    model = QwenVisualTokenizer(config)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True)
    model = model.float().eval()
    with torch.no_grad():
        out = model.forward_with_intermediates(inputs["pixel_values"].float())
    return {k: out[k].detach().float().cpu() for k in GOLDEN_VIT_OUTPUT_NAMES}


# ---------------------------------------------------------------------------------------------------- detok fixtures
def golden_detok_resampler(
    meta: Mapping, state_dict: Mapping[str, torch.Tensor], inputs: Mapping[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """Run a ``detok_resampler`` golden fixture (docs/reference.md §10) through :class:`ResamplerXLV2`.

    Args:
        meta: the fixture's JSON sidecar; ``meta['constructor_kwargs']`` holds the official constructor arguments.
        state_dict: module-level weights (no ``resampler.`` prefix), loaded with ``strict=True``.
        inputs: ``{'x': (B, T, embedding_dim) float tensor}`` (the fixture's ``input.*`` entries, prefix removed).

    Returns:
        ``{'prompt_embeds': (B, Q, out1 + out2), 'pooled_prompt_embeds': (B, out2),
        'intermediate.hidden_embeds': (B, Q, dim)}`` in float32 (fixture output names without ``output.``).

    Raises:
        KeyError: ``constructor_kwargs`` or ``x`` is missing. RuntimeError: the weights do not load strictly.
    """
    cfg = DetokenizerResamplerConfig.from_dict(meta["constructor_kwargs"])
    with torch.device("meta"):
        model = ResamplerXLV2(cfg)
    model.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
    model.eval()
    with torch.no_grad():
        prompt_embeds, pooled, h = model.forward_with_intermediates(inputs["x"].float())
    return {"prompt_embeds": prompt_embeds, "pooled_prompt_embeds": pooled, "intermediate.hidden_embeds": h}


def run_agent(meta: dict, state: Tensors, inputs: Tensors) -> Tensors:
    """Agent forward (losses, intermediates) and the official greedy generate (docs/reference.md §2.5, §2.6)."""
    out = dict(golden_agent_forward(meta, state, inputs)) if any(k.startswith("forward.") for k in inputs) else {}
    if any(k.startswith("generate.") for k in inputs):
        agent = load_golden_agent(meta, state)
        tokens = meta["tokens"]
        n_img = int(meta["generate"]["num_img_gen_tokens"])
        boi = int(tokens.get("BOI <img>", meta["base_vocab"]))
        eoi = int(tokens.get("EOI </img>", boi + 1))
        first_img = int(tokens.get("IMG <img_00000>..", [boi + 2])[0])
        image = ImageTokens(boi=boi, eoi=eoi, img=tuple(range(first_img, first_img + n_img)))
        cmp = inputs.get("generate.embeds_cmp_mask")
        feats = inputs.get("generate.image_embeds")
        if feats is not None and cmp is not None:
            feats = feats[cmp.bool()]
        gen = official_generate(
            agent,
            inputs["generate.input_ids"],
            feats,
            inputs.get("generate.ids_cmp_mask"),
            image=image,
            bos_id=int(tokens.get("bos", 1)),
            eos_id=int(tokens.get("eos", 2)),
            max_new_tokens=int(meta["generate"]["max_new_tokens"]),
        )
        out["generate.generate_ids"] = gen["generate_ids"]
        out["generate.has_img_output"] = gen["has_img_output"]
        out["generate.num_gen_imgs"] = gen["num_gen_imgs"]
        out["generate.intermediate.step_scores"] = gen["step_scores"]
        if "img_gen_feat" in gen:
            out["generate.img_gen_feat"] = gen["img_gen_feat"]
            out["generate.intermediate.img_hidden_states"] = gen["img_hidden_states"]
    return out


RUNNERS: Dict[str, Callable[[dict, Tensors, Tensors], Tensors]] = {
    "vit": golden_vit,
    "resampler_in": run_resampler,
    "resampler_out": run_resampler,
    "detok_resampler": golden_detok_resampler,
    "agent": run_agent,
}


def find_fixtures(fixture_dir: Path) -> List[Tuple[str, Path, Path]]:
    """(name, json, safetensors) of every tensor fixture in ``fixture_dir`` (sorted by name)."""
    found = []
    for sidecar in sorted(Path(fixture_dir).glob("*.json")):
        if sidecar.name == "index.json":
            continue
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError:
            continue
        if not isinstance(meta, dict) or "fixture" not in meta:
            continue
        tensors = sidecar.parent / (meta.get("file") or sidecar.with_suffix(".safetensors").name)
        if tensors.exists():
            found.append((sidecar.stem, sidecar, tensors))
    return found


def run_fixture(sidecar: Path, tensors_path: Path) -> Tensors:
    """Run one fixture; returns ``output.*`` tensors. Only ``input.*`` and state-dict tensors are read."""
    meta = json.loads(sidecar.read_text())
    kind = meta["fixture"]
    if kind not in RUNNERS:
        raise ValueError(f"{sidecar.name}: unknown fixture kind {kind!r}; known: {sorted(RUNNERS)}")
    tensors = {}
    with safe_open(str(tensors_path), framework="pt") as handle:
        for key in handle.keys():
            if not key.startswith("output."):  # never read expected outputs
                tensors[key] = handle.get_tensor(key)
    state, inputs = _split(tensors)
    torch.manual_seed(0)
    outputs = RUNNERS[kind](meta, state, inputs)
    return {f"output.{k}": v.detach().cpu().contiguous() for k, v in outputs.items()}


def run(fixture_dir: Path, out_dir: Path, *, verbose: bool = True) -> List[str]:
    """Run every fixture of ``fixture_dir``, writing ``out_dir/<name>.safetensors``; returns the names."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    fixtures = find_fixtures(fixture_dir)
    if not fixtures:
        raise ValueError(f"no fixtures (JSON sidecar + safetensors) found in {fixture_dir}")
    for name, sidecar, tensors_path in fixtures:
        outputs = run_fixture(sidecar, tensors_path)
        save_file(outputs, str(out_dir / f"{name}.safetensors"))
        names.append(name)
        if verbose:
            print(f"ran {name}: {len(outputs)} outputs -> {out_dir / (name + '.safetensors')}")
    return names


def compare(fixture_dir: Path, out_dir: Path) -> bool:
    """Compare produced outputs with the fixtures' ``output.*``; prints one line per output; True if all pass."""
    ok = True
    for name, sidecar, tensors_path in find_fixtures(fixture_dir):
        meta = json.loads(sidecar.read_text())
        tol = meta.get("tolerance", {})
        rtol = float(tol.get("recommended_rtol", 1e-4))
        atol = float(tol.get("recommended_atol", 1e-5))
        produced_path = out_dir / f"{name}.safetensors"
        produced = load_file(str(produced_path)) if produced_path.exists() else {}
        with safe_open(str(tensors_path), framework="pt") as handle:
            expected_keys = sorted(k for k in handle.keys() if k.startswith("output."))
            for key in expected_keys:
                exp = handle.get_tensor(key)
                got = produced.get(key)
                if got is None:
                    print(f"FAIL {name} {key}: not produced")
                    ok = False
                    continue
                if tuple(got.shape) != tuple(exp.shape):
                    print(f"FAIL {name} {key}: shape {tuple(got.shape)} != expected {tuple(exp.shape)}")
                    ok = False
                    continue
                if exp.is_floating_point():
                    err = (got.double() - exp.double()).abs().max().item() if exp.numel() else 0.0
                    passed = bool(torch.allclose(got.to(exp.dtype), exp, rtol=rtol, atol=atol))
                    print(
                        f"{'ok  ' if passed else 'FAIL'} {name} {key}: "
                        f"max abs err {err:.3e} (rtol {rtol:g}, atol {atol:g})"
                    )
                else:
                    passed = torch.equal(got.to(exp.dtype), exp)
                    err = 0.0 if passed else float((got.long() - exp.long()).abs().max()) if got.numel() else 0.0
                    print(
                        f"{'ok  ' if passed else 'FAIL'} {name} {key}: "
                        f"exact {'match' if passed else f'mismatch (max abs diff {err:g})'}"
                    )
                ok &= passed
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seedstory_core.golden", description="SEED-Story golden parity")
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="run every fixture and write OUT_DIR/<fixture>.safetensors")
    p_run.add_argument("fixture_dir", type=Path)
    p_run.add_argument("out_dir", type=Path)
    p_check = sub.add_parser("check", help="run and compare against the fixtures' expected outputs")
    p_check.add_argument("fixture_dir", type=Path)
    p_check.add_argument("--out", type=Path, default=None, help="where to write outputs (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        if not args.fixture_dir.is_dir():
            raise ValueError(f"{args.fixture_dir} is not a folder of golden fixtures")
        if args.command == "run":
            run(args.fixture_dir, args.out_dir)
            return 0
        out = args.out or Path(tempfile.mkdtemp(prefix="seedstory_golden_"))
        run(args.fixture_dir, out, verbose=False)
        ok = compare(args.fixture_dir, out)
        print("golden check: " + ("all outputs within tolerance" if ok else "FAILED"))
        return 0 if ok else 1
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"golden: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

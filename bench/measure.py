"""The story-engine benchmark's measurements: the random-weight model, the phase probe, the timed story steps, the
image queries, the paired steps, the decode floor and the peak memory of a fresh process per policy.

Every story step is timed, split into phases:

* ``prefill``  — from the start of :meth:`StoryEngine.step` to the end of the context pass (the forward that stores
  the previous step's image; for ``reencode_window`` the re-encoding of the whole window prompt). Includes the cache
  fork and the eviction that runs right after the image completes (re-rotation of the kept keys).
* ``decode``   — text decoding, token by token (exactly ``sentence_tokens`` tokens; see :func:`build_engine`).
* ``image``    — the image-query pass (:func:`~seedstory_core.generation.image_query_pass`, one forward).
* ``other``    — after the image queries to the return of ``step`` (building the new immutable state).

The phases are found by wrapping ``seedstory_core.story.forward_chunk`` / ``image_query_pass`` with timestamps
(:class:`PhaseProbe`; the engine is not modified). Repeats are interleaved (rep 0 of every policy, then rep 1, ...
with a rotated policy order), so a noisy shared CPU affects all policies alike.

Memory: ``kv_bytes`` = ``state.context.nbytes()`` after the step (the kept cache); ``kv_bytes_work`` = the cache in use
right before the image queries (kept context + this step's sentence; for ``reencode_window`` the transient
re-encoded window, since its state keeps no cache). Peak process memory = the resident set of a fresh child process
per policy (:func:`memory_child`; tracemalloc does not see torch's tensor allocations); on CUDA
``torch.cuda.max_memory_allocated`` per policy.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from transformers import DynamicCache, LlamaForCausalLM

from bench.config import REPO, BenchConfig, settings_for
from bench.report import STEP_COLUMNS, write_csv
from seedstory_core import story as story_module
from seedstory_core.agent import SeedStoryAgent
from seedstory_core.cache import CachePolicy, StoryKVCache
from seedstory_core.config import official_config
from seedstory_core.generation import forward_chunk, image_query_pass, logits_at
from seedstory_core.story import DecodingSettings, PolicyEngines
from seedstory_core.tiny import default_tiny_tokenizer, tiny_config
from seedstory_core.tokens import image_segment_kinds

#: the opening sentence of every benchmark story
OPENING = "Tom the cat sat in the garden."


# ------------------------------------------------------------------------------------------------ model
def build_engine(cfg: BenchConfig) -> Tuple[PolicyEngines, torch.Tensor]:
    """The random-weight engines for ``cfg.preset`` (one per policy type, :class:`PolicyEngines`) plus a (1, T, D)
    start-feature tensor, on ``cfg.device`` in ``cfg.dtype``.

    The tiny tokenizer builder makes a LLaMA-layout tokenizer of any base size (filler pieces up to it), so it is also
    the stand-in for the 32000-piece LLaMA tokenizer of the official preset (only ids and their count matter for
    timing). Random weights almost never pick BOI or EOS, but "almost" is not enough for equal work per step: the
    lm_head rows of BOI and EOS are zeroed (logit exactly 0, below the max of ~1000 random logits), so every sentence
    hits ``max_sentence_tokens`` and all policies decode exactly the same number of tokens per step (checked per row
    in the CSV: ``text_tokens``). LoRA B matrices are randomised (peft initialises them to zero) so the adapters are
    real work in every forward.
    """
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
    config = official_config() if cfg.preset in ("official", "full") else tiny_config()
    if cfg.layers is not None:
        llm = dataclasses.replace(config.agent.llm, num_hidden_layers=int(cfg.layers))
        config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, llm=llm))
    n_img = config.agent.image_tokens.num_img_tokens
    base_vocab = config.agent.llm.vocab_size - 2 - n_img
    torch.manual_seed(cfg.seed)
    agent = SeedStoryAgent.build(config.agent, device=cfg.device, dtype=dtype).eval()
    tokenizer = default_tiny_tokenizer(base_vocab)
    with torch.no_grad():
        for name, p in agent.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
        head = agent.lm_head.weight
        head[tokenizer.image_ids.boi].zero_()
        head[tokenizer.eos_id].zero_()
    engines = PolicyEngines(agent, tokenizer, merge_lora=cfg.merge_lora)
    engines.engine(CachePolicy())  # the KV engine now: its merged decoder is built before anything is timed
    g = torch.Generator().manual_seed(cfg.seed + 1)
    feats = torch.randn(1, config.visual_tokenizer.n_queries, config.agent.input_resampler.kv_dim, generator=g)
    return engines, feats.to(device=cfg.device, dtype=dtype)


def start_story(engines: PolicyEngines, feats, policy: str, cfg: BenchConfig):
    """A new benchmark story under ``policy`` (a :data:`bench.config.POLICIES` choice) from ``feats``."""
    return engines.start(OPENING, features=feats, settings=settings_for(policy, cfg.window_images))


def decoding_for(cfg: BenchConfig) -> DecodingSettings:
    """Greedy decoding of exactly ``cfg.sentence_tokens`` text tokens per step (see :func:`build_engine`)."""
    return DecodingSettings(max_sentence_tokens=cfg.sentence_tokens)


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA), so that a timestamp covers it; nothing on the CPU."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ phase probe
class PhaseProbe:
    """Wraps ``story.forward_chunk`` and ``story.image_query_pass`` to timestamp the phases of one step."""

    def __init__(self, device: str):
        self.device = device
        self.events: List[tuple] = []
        self.kv_work = 0

    @contextlib.contextmanager
    def installed(self):
        """While inside: the engine's decoding primitives record (kind, tokens or start, time) events."""
        orig_fc, orig_iq = story_module.forward_chunk, story_module.image_query_pass
        probe = self

        def fc(agent, cache, embeds, kinds, **kw):
            out = orig_fc(agent, cache, embeds, kinds, **kw)
            sync(probe.device)
            probe.events.append(("fc", len(kinds), time.perf_counter()))
            return out

        def iq(agent, cache, image, **kw):
            probe.kv_work = cache.nbytes()
            sync(probe.device)
            t0 = time.perf_counter()
            out = orig_iq(agent, cache, image, **kw)
            sync(probe.device)
            probe.events.append(("iq", t0, time.perf_counter()))
            return out

        story_module.forward_chunk, story_module.image_query_pass = fc, iq
        try:
            yield self
        finally:
            story_module.forward_chunk, story_module.image_query_pass = orig_fc, orig_iq

    def timed_step(self, engines, state, decoding) -> Tuple[object, Dict[str, float]]:
        """One ``engines.step(state)`` (inside :meth:`installed`): (its StepResult, seconds per phase and in total)."""
        self.events = []
        sync(self.device)
        t_start = time.perf_counter()
        result = engines.step(state, decoding=decoding)
        sync(self.device)
        t_end = time.perf_counter()
        prefill_end = t_start
        fcs = [e for e in self.events if e[0] == "fc"]
        if fcs and fcs[0][1] > 1:  # the context pass (66 tokens, or the whole re-encoded window)
            prefill_end = fcs[0][2]
        iq = [e for e in self.events if e[0] == "iq"][-1]
        phases = dict(
            total_s=t_end - t_start,
            prefill_s=prefill_end - t_start,
            decode_s=iq[1] - prefill_end,
            image_s=iq[2] - iq[1],
            other_s=t_end - iq[2],
        )
        return result, phases


# ------------------------------------------------------------------------------------------------ story steps
def run_policy(
    engines: PolicyEngines,
    feats,
    policy: str,
    cfg: BenchConfig,
    probe: PhaseProbe,
    rep: int,
    n_frames: int,
    keep_states: Optional[Dict] = None,
) -> List[dict]:
    """One story of ``n_frames`` timed steps under ``policy``: a row per step (:data:`bench.report.STEP_COLUMNS`).
    ``keep_states`` receives the states at the measured lengths and one frame before, keyed ``(policy, frame)``."""
    decoding = decoding_for(cfg)
    image_tokens = len(engines.tokenizer.image_ids.forced_sequence)
    state = start_story(engines, feats, policy, cfg)
    rows = []
    for frame in range(1, n_frames + 1):
        prev_len = len(state.token_ids)
        result, phases = probe.timed_step(engines, state, decoding)
        state = result.state
        cache = state.context if isinstance(state.context, StoryKVCache) else None
        rows.append(
            dict(
                mode=cfg.mode,
                preset=cfg.preset,
                device=cfg.device,
                dtype=cfg.dtype,
                policy=policy,
                rep=rep,
                frame=frame,
                **{k: round(v, 7) for k, v in phases.items()},
                text_tokens=len(state.token_ids) - prev_len - image_tokens,
                kv_tokens=state.kv_length,
                kv_bytes=cache.nbytes() if cache is not None else 0,
                kv_bytes_work=probe.kv_work,
                evictions=cache.meta.evictions if cache is not None else 0,
            )
        )
        if keep_states is not None and (frame in cfg.lengths or frame + 1 in cfg.lengths):
            keep_states[(policy, frame)] = state
    return rows


def measure_steps(engines: PolicyEngines, feats, cfg: BenchConfig, log=print) -> Tuple[List[dict], Dict]:
    """Interleaved repeats of full stories for every policy; returns per-step rows and the states of rep 0
    (plus ``"cuda_peak"``: bytes per policy on CUDA)."""
    probe = PhaseProbe(cfg.device)
    states: Dict = {}
    rows: List[dict] = []
    cuda_peak: Dict[str, int] = {}
    with probe.installed():
        for policy in cfg.policies:  # warm-up (allocator, lazy imports, first-call overheads)
            run_policy(engines, feats, policy, cfg, probe, -1, min(cfg.warmup_steps, cfg.max_frames))
        order = list(cfg.policies)
        for rep in range(cfg.reps):
            rot = order[rep % len(order) :] + order[: rep % len(order)]
            for policy in rot:
                t0 = time.perf_counter()
                if str(cfg.device).startswith("cuda") and rep == 0:
                    torch.cuda.reset_peak_memory_stats()
                rows += run_policy(
                    engines, feats, policy, cfg, probe, rep, cfg.max_frames, states if rep == 0 else None
                )
                if str(cfg.device).startswith("cuda") and rep == 0:
                    cuda_peak[policy] = torch.cuda.max_memory_allocated()
                log(
                    f"  rep {rep} {policy:16s} {cfg.max_frames} frames in {time.perf_counter() - t0:.1f} s"
                    + (
                        f", peak GPU memory {cuda_peak[policy] / 2**30:.2f} GiB"
                        if policy in cuda_peak and rep == 0
                        else ""
                    )
                )
                # kept as the run goes: a run stopped at a time limit still leaves every finished story's rows
                write_csv(cfg.out_dir / f"engine_{cfg.mode}_{cfg.preset}_steps.partial.csv", rows, STEP_COLUMNS)
    states["cuda_peak"] = cuda_peak
    return rows, states


# ------------------------------------------------------------------------------------------------ image queries
@torch.no_grad()
def measure_image_queries(engines: PolicyEngines, state, cfg: BenchConfig) -> Dict[str, float]:
    """One-pass image queries vs forced token-by-token decoding (BOI, IMG_0.. one token per forward, with the
    cache), on the context of ``state`` after its pending image is stored. Both include the output resampler.
    ``forced`` runs only the decoder forwards (no lm_head / logits processor per token: the cheapest possible
    token-by-token loop, so the ratio is a lower bound); ``forced_logits`` adds the lm_head per token as a real
    ``generate`` loop would."""
    engine = engines.engine(state.settings.policy)
    agent, image = engine.inference_model(), engine.image  # the decoder the engine itself runs
    cache = state.context.fork()
    forward_chunk(agent, cache, engine.image_embeds(state.pending_image), engine.image_kinds())
    base_len = cache.length
    ids = [image.boi, *image.img]
    kinds = image_segment_kinds(len(image.img), eoi=False)
    embeds = [agent.embed_tokens(torch.tensor([[t]], device=engine.device)) for t in ids]

    def one_pass():
        return image_query_pass(agent, cache, image, commit=False)["features"]

    def forced(with_logits: bool):
        step_cache = cache.fork()
        hs = []
        for e, k in zip(embeds, kinds):
            h = forward_chunk(agent, step_cache, e, [k])
            if with_logits:
                int(logits_at(agent, h[0, -1]).argmax())
            hs.append(h[:, -1])
        feats = agent.output_resampler(torch.stack(hs[1:], dim=1))
        for layer in step_cache.layers:  # give the buffer tail back so the next pass appends in place too
            layer.crop(base_len)
        return feats

    fns = {"onepass": one_pass, "forced": lambda: forced(False), "forced_logits": lambda: forced(True)}
    times = {k: [] for k in fns}
    for k, f in fns.items():  # warm-up
        f()
    for r in range(cfg.image_query_reps):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            sync(cfg.device)
            t0 = time.perf_counter()
            fns[k]()
            sync(cfg.device)
            times[k].append(time.perf_counter() - t0)
    a, b = one_pass(), forced(False)
    out = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    out["max_abs_diff"] = float((a - b).abs().max())
    out["context_tokens"] = base_len
    return out


# ------------------------------------------------------------------------------------------------ paired steps
@torch.no_grad()
def measure_step_pair(
    engines: PolicyEngines, states: Dict, policy: str, lo: int, hi: int, cfg: BenchConfig
) -> Dict[str, float]:
    """Per-step time at frame ``hi`` over frame ``lo`` for ``policy``, paired: the steps from the kept states of
    frames ``lo - 1`` and ``hi - 1`` (states are immutable, so stepping from them again *is* frame lo / hi) are
    timed alternately, ``cfg.step_pairs`` pairs; returns the median of the per-pair ratios and the
    medians of both. Robust to a CPU shared with other jobs: each pair runs back to back."""
    a_state, b_state = states.get((policy, lo - 1)), states.get((policy, hi - 1))
    if a_state is None or b_state is None or lo < 2:
        return {}
    return measure_state_pair(engines, a_state, b_state, cfg)


@torch.no_grad()
def measure_state_pair(engines: PolicyEngines, a_state, b_state, cfg: BenchConfig) -> Dict[str, float]:
    """One story step from ``a_state`` and one from ``b_state``, timed back to back (order alternating),
    ``max(3, cfg.step_pairs)`` pairs; ``ratio`` = median of (time b / time a).

    Each timed step starts from an untimed private copy of the state (:meth:`StoryKVCache.copy`): stepping twice
    from one state would make every step after the first copy the shared cache prefix first (copy-on-write), an
    O(context) cost that a story stepped in order never pays."""
    decoding = decoding_for(cfg)
    probe = PhaseProbe(cfg.device)
    ta, tb, ratios = [], [], []

    def private(state):
        if not isinstance(state.context, StoryKVCache):
            return state
        return dataclasses.replace(state, context=state.context.copy())

    with probe.installed():
        (
            probe.timed_step(engines, private(a_state), decoding),
            probe.timed_step(engines, private(b_state), decoding),
        )  # warm-up
        for r in range(max(3, cfg.step_pairs)):
            order = (a_state, b_state) if r % 2 == 0 else (b_state, a_state)
            t = {}
            for st in order:
                t[id(st)] = probe.timed_step(engines, private(st), decoding)[1]["total_s"]
            ta.append(t[id(a_state)])
            tb.append(t[id(b_state)])
            ratios.append(t[id(b_state)] / t[id(a_state)])
    return dict(
        ratio=statistics.median(ratios),
        lo_s=statistics.median(ta),
        hi_s=statistics.median(tb),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        pairs=len(ratios),
    )


# ------------------------------------------------------------------------------------------------ decode floor
def plain_transformers_model(engine):
    """A plain transformers ``LlamaForCausalLM`` with the engine's LLaMA config (SDPA), random weights, on the
    engine's device and dtype: the per-token floor the engine's decode is compared with."""
    lcfg = engine.agent.config.llm.to_transformers()
    lcfg._attn_implementation = "sdpa"
    with torch.device(engine.device):
        model = LlamaForCausalLM(lcfg)
    return model.to(dtype=engine.dtype).eval()


@torch.no_grad()
def measure_decode_floor(engines: PolicyEngines, state, cfg: BenchConfig, plain=None) -> Dict[str, float]:
    """Decode time per token: the story engine vs a plain transformers ``LlamaForCausalLM`` + ``DynamicCache``.

    Same config, dtype, device, torch threads and cache length, in the same process, paired and interleaved
    (order alternating per repeat). Ours: the decode phase of ``engine.step(state)`` with
    ``max_sentence_tokens=cfg.decode_tokens`` (greedy; every token = one decoder forward on the story cache +
    lm_head + the image-token rule + argmax), divided by the tokens decoded. Plain: a ``DynamicCache`` prefilled
    (untimed) with as many random tokens as our cache holds when decoding starts, then ``cfg.decode_tokens``
    greedy steps (forward + argmax of the last logits). Returns medians and the median of per-repeat ratios.
    """
    engine = engines.engine(state.settings.policy)
    plain = plain if plain is not None else plain_transformers_model(engine)
    decoding = DecodingSettings(max_sentence_tokens=cfg.decode_tokens)
    probe = PhaseProbe(cfg.device)
    ctx = state.kv_length + (len(engine.image.forced_sequence) if state.pending_image is not None else 0)
    vocab = engine.agent.config.llm.vocab_size
    gen = torch.Generator().manual_seed(cfg.seed)

    def ours():
        _, phases = probe.timed_step(engines, state, decoding)
        return phases["decode_s"] / cfg.decode_tokens

    def theirs():
        cache = DynamicCache()
        ids = torch.randint(0, vocab, (1, ctx), generator=gen).to(engine.device)
        out = plain(input_ids=ids, cache=cache, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(cfg.device)
        t0 = time.perf_counter()
        for _ in range(cfg.decode_tokens):
            out = plain(input_ids=tok, cache=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(cfg.device)
        return (time.perf_counter() - t0) / cfg.decode_tokens

    with probe.installed():
        ours(), theirs()  # warm-up
        a, b, ratios = [], [], []
        for r in range(cfg.decode_reps):
            if r % 2 == 0:
                x = ours()
                y = theirs()
            else:
                y = theirs()
                x = ours()
            a.append(x)
            b.append(y)
            ratios.append(x / y)
    return dict(
        ours_ms_per_token=1000 * statistics.median(a),
        plain_ms_per_token=1000 * statistics.median(b),
        ratio=statistics.median(ratios),
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        cache_tokens=ctx,
        tokens=cfg.decode_tokens,
        reps=cfg.decode_reps,
        merge_lora=int(engine.merge_lora),
    )


# ------------------------------------------------------------------------------------------------ memory
#: the BenchConfig fields a memory child is built from (the rest of its payload: policy, frames, lengths)
MEMORY_CHILD_FIELDS = (
    "preset",
    "device",
    "dtype",
    "sentence_tokens",
    "window_images",
    "seed",
    "threads",
    "merge_lora",
    "layers",
)


def memory_child(payload: dict) -> dict:
    """Runs in a fresh process: one policy's story to ``frames``; reports ru_maxrss before and after."""
    cfg = BenchConfig(**{k: v for k, v in payload.items() if k in MEMORY_CHILD_FIELDS})
    torch.set_num_threads(cfg.threads)
    engines, feats = build_engine(cfg)
    decoding = decoding_for(cfg)
    with torch.no_grad():
        state = start_story(engines, feats, payload["policy"], cfg)
        state = engines.step(state, decoding=decoding).state

    def rss_kib():  # current resident set (sampled after each step); ru_maxrss is dominated by the model build
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except (OSError, ValueError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    base = rss_kib()
    peaks, high = {}, base
    for frame in range(2, payload["frames"] + 1):
        state = engines.step(state, decoding=decoding).state
        high = max(high, rss_kib())
        if frame in payload["lengths"]:
            peaks[frame] = high
    return {
        "policy": payload["policy"],
        "baseline_kib": base,
        "peak_kib": peaks,
        "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def measure_memory(cfg: BenchConfig, log=print) -> Dict[str, dict]:
    """:func:`memory_child` of every policy (of ``cfg.memory_policies``), each in a fresh ``python -m bench
    --memory-child`` process: {policy: its report}; a failed child is logged and left out."""
    out = {}
    for policy in cfg.policies:
        if cfg.memory_policies is not None and policy not in cfg.memory_policies:
            continue
        payload = dict(policy=policy, frames=cfg.max_frames, lengths=list(cfg.lengths))
        payload.update({k: getattr(cfg, k) for k in MEMORY_CHILD_FIELDS})
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "--memory-child", json.dumps(payload)],
            cwd=str(REPO),
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if proc.returncode != 0:
            log(f"  memory child for {policy} failed:\n{proc.stderr[-2000:]}")
            continue
        out[policy] = json.loads(proc.stdout.strip().splitlines()[-1])
        log(f"  memory {policy:16s} in {time.perf_counter() - t0:.1f} s")
    return out

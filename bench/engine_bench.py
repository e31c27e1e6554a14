"""Story-engine benchmark: the efficiency side of the SEED-Story paper's Table 8.

For every cache policy (``dense``, ``window``, ``sink``, ``multimodal_sink``) and the official baseline
(``reencode_window``: the windowed prompt re-encoded from scratch every step, as ``gen_george.py`` does), a story is
run to ``max(lengths)`` frames and every story step is timed, split into phases:

* ``prefill``  — from the start of :meth:`StoryEngine.step` to the end of the context pass (the forward that stores
  the previous step's image; for ``reencode_window`` the re-encoding of the whole window prompt). Includes the cache
  fork and the eviction that runs right after the image completes (re-rotation of the kept keys).
* ``decode``   — text decoding, token by token (exactly ``sentence_tokens`` tokens; see ``build_engine``).
* ``image``    — the image-query pass (:func:`~seedstory_core.generation.image_query_pass`, one forward).
* ``other``    — after the image queries to the return of ``step`` (building the new immutable state).

The phases are found by wrapping ``seedstory_core.story.forward_chunk`` / ``image_query_pass`` with timestamps
(the engine is not modified). Repeats are interleaved (rep 0 of every policy, then rep 1, ... with a rotated policy
order) and summarised by the median, so a noisy shared CPU affects all policies alike.

Frame N = the N-th :meth:`StoryEngine.step` after :meth:`StoryEngine.start` (the start image is frame 0). With
``window_images=8`` nothing is evicted up to frame 8.

Memory: ``kv_bytes`` = ``state.context.nbytes()`` after the step (the kept cache); ``kv_bytes_work`` = the cache in use
right before the image queries (kept context + this step's sentence; for ``reencode_window`` the transient
re-encoded window, since its state keeps no cache). Peak process memory = ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
of a fresh child process per policy (tracemalloc does not see torch's tensor allocations); on CUDA
``torch.cuda.max_memory_allocated`` per policy.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "out"  # untracked (bench/.gitignore); --update-docs writes the tracked copies below
TRACKED_RESULTS = REPO / "bench" / "results"
TRACKED_DOCS = REPO / "docs" / "benchmarks.md"
TRACKED_IMG = REPO / "docs" / "img"
#: ``default`` = the pack's default story settings (``StorySettings()``: the multimodal sink with a cap on sink
#: images, bounded); ``multimodal_sink`` = the paper's uncapped rule (Table 8 reproduction).
POLICIES = ("dense", "window", "sink", "multimodal_sink", "default", "reencode_window")
RATIO_KEYS = (
    "decode_ms_per_token_over_plain_transformers",
    "step50_over_step5_default",
    "kv_bytes_default_over_dense_at_50",
    "reencode_over_multimodal_sink",
    "forced_over_onepass_image_queries",
)
#: targets of issue 14 (printed next to the ratios in the docs): (comparison, value)
RATIO_TARGETS = {
    "decode_ms_per_token_over_plain_transformers": ("<=", 1.25),
    "step50_over_step5_default": ("<=", 1.15),
    "kv_bytes_default_over_dense_at_50": ("<=", 0.3),
    "reencode_over_multimodal_sink": (">=", 2.5),
    "forced_over_onepass_image_queries": (">=", 10),
}
# Paper Table 8 (seed_story_paper.txt): time and memory for generating 50 sequences, averaged over several runs.
PAPER_TABLE8 = {
    "dense": dict(name="Dense Attn", fid=119.72, clip=0.705, time_s=569.67, memory_gb=37.99),
    "window": dict(name="Window Attn", fid=334.90, clip=0.598, time_s=450.64, memory_gb=30.81),
    "sink": dict(name="Attn Sink", fid=221.53, clip=0.676, time_s=451.94, memory_gb=30.81),
    "multimodal_sink": dict(name="Ours (multimodal sink)", fid=79.67, clip=0.728, time_s=473.98, memory_gb=31.82),
}
STEP_COLUMNS = (
    "mode",
    "preset",
    "device",
    "dtype",
    "policy",
    "rep",
    "frame",
    "total_s",
    "prefill_s",
    "decode_s",
    "image_s",
    "other_s",
    "text_tokens",
    "kv_tokens",
    "kv_bytes",
    "kv_bytes_work",
    "evictions",
)
SUMMARY_COLUMNS = (
    "mode",
    "preset",
    "policy",
    "frames",
    "reps",
    "total_s",
    "prefill_s",
    "decode_s",
    "image_s",
    "other_s",
    "total_s_min",
    "total_s_max",
    "kv_tokens",
    "kv_bytes",
    "kv_bytes_work",
    "cumulative_s",
)


@dataclass
class BenchConfig:
    mode: str = "quick"  # quick | full | smoke
    preset: str = "tiny"
    device: str = "cpu"
    dtype: str = "fp32"
    policies: Tuple[str, ...] = POLICIES
    lengths: Tuple[int, ...] = (5, 10, 25, 50)
    reps: int = 3
    sentence_tokens: int = 24
    window_images: int = 8
    image_query_reps: int = 5
    warmup_steps: int = 3
    threads: int = 1
    pool_frames: int = 3  # summary medians pool frames N-2..N (see summarize)
    step_pairs: int = 25  # back-to-back step pairs per paired ratio (median of the pair ratios)
    memory: bool = True
    memory_policies: Optional[Tuple[str, ...]] = None  # None = every policy
    seed: int = 0
    decode_tokens: int = 48  # tokens per decode-floor sample (ours vs plain transformers)
    decode_reps: int = 7
    merge_lora: Optional[bool] = None  # StoryEngine(merge_lora=...): None = auto
    random_weights: bool = True
    extras: bool = True  # image queries, decode floor, paired steps (off: --skip-extras, a quick path check)
    layers: Optional[int] = None  # override the preset's decoder layer count (e.g. a 2-layer full-size run on CPU)
    out_dir: Path = DEFAULT_OUT
    docs_path: Optional[Path] = DEFAULT_OUT / "benchmarks.md"
    img_dir: Optional[Path] = DEFAULT_OUT / "img"

    @property
    def max_frames(self) -> int:
        return max(self.lengths)


#: BenchConfig overrides of each run mode (--smoke / --quick / default full): how many policies, lengths and
#: repetitions a run measures.
BENCH_CONFIG_BY_MODE = {
    "smoke": dict(
        policies=("dense", "window"),
        lengths=(3, 6),
        reps=1,
        sentence_tokens=4,
        window_images=2,
        image_query_reps=1,
        warmup_steps=1,
        memory=False,
        pool_frames=1,
        decode_tokens=4,
        decode_reps=1,
        step_pairs=3,
    ),
    # quick: peak RSS only for dense and multimodal_sink (each child re-runs a 50-frame story, ~15 s)
    "quick": dict(reps=3, image_query_reps=5, memory_policies=("dense", "multimodal_sink")),
    "full": dict(reps=7, image_query_reps=11, decode_reps=11),
}


# ------------------------------------------------------------------------------------------------ model
class SyntheticTokenizer:
    """Placeholder (documentation only): the official preset uses ``default_tiny_tokenizer(32000)``, a real
    LLaMA-layout tokenizer with 32000 pieces and the 66 image tokens at 32000..32065 — only ids matter here."""


class AnyPolicyEngine:
    """The bench's engine for every policy of one run: ``start``/``step`` go to the engine that runs the story's
    policy (:func:`seedstory_core.story.engine_for`: the KV engine, or the official re-encode loop's engine, both
    over the same agent, merged decoder and tokenizer); every other attribute is the KV engine's."""

    def __init__(self, engine):
        self.kv = engine
        self._engines = {}

    def _for(self, policy):
        from seedstory_core.story import engine_for

        key = type(policy)
        if key not in self._engines:
            self._engines[key] = (
                self.kv
                if key is self.kv.policy_type
                else engine_for(policy, self.kv.agent, self.kv.tokenizer, merge_lora=self.kv.merge_lora)
            )
        return self._engines[key]

    def start(self, text, **kw):
        return self._for(kw["settings"].policy).start(text, **kw)

    def step(self, state, **kw):
        return self._for(state.settings.policy).step(state, **kw)

    def __getattr__(self, name):
        return getattr(self.__dict__["kv"], name)


def build_engine(cfg: BenchConfig):
    """A random-weight :class:`StoryEngine` for ``cfg.preset`` plus a (1, T, D) start-feature tensor.

    Random weights almost never pick BOI or EOS, but "almost" is not enough for equal work per step: the lm_head
    rows of BOI and EOS are zeroed (logit exactly 0, below the max of ~1000 random logits), so every sentence hits
    ``max_sentence_tokens`` and all policies decode exactly the same number of tokens per step (checked per row in
    the CSV: ``text_tokens``). LoRA B matrices are randomised (peft initialises them to zero) so the adapters are
    real work in every forward.
    """
    from seedstory_core.agent import SeedStoryAgent
    from seedstory_core.config import official_config
    from seedstory_core.story import StoryEngine
    from seedstory_core.tiny import default_tiny_tokenizer, tiny_config

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.dtype]
    config = official_config() if cfg.preset in ("official", "full") else tiny_config()
    if cfg.layers is not None:
        llm = dataclasses.replace(config.agent.llm, num_hidden_layers=int(cfg.layers))
        config = dataclasses.replace(config, agent=dataclasses.replace(config.agent, llm=llm))
    n_img = config.agent.image_tokens.num_img_tokens
    base_vocab = config.agent.llm.vocab_size - 2 - n_img
    torch.manual_seed(cfg.seed)
    agent = SeedStoryAgent.build(config.agent, device=cfg.device, dtype=dtype).eval()
    # The tiny tokenizer builder makes a LLaMA-layout tokenizer of any base size (filler pieces up to it), so it is
    # also the stand-in for the 32000-piece LLaMA tokenizer of the official preset (no real one is needed: only
    # ids and their count matter for timing).
    tokenizer = default_tiny_tokenizer(base_vocab)
    with torch.no_grad():
        for name, p in agent.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
        head = agent.lm_head.weight
        head[tokenizer.image_ids.boi].zero_()
        head[tokenizer.eos_id].zero_()
    engine = AnyPolicyEngine(StoryEngine(agent, tokenizer, merge_lora=cfg.merge_lora))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    feats = torch.randn(1, config.visual_tokenizer.n_queries, config.agent.input_resampler.kv_dim, generator=g)
    return engine, feats.to(device=cfg.device, dtype=dtype)


def settings_for(policy: str, cfg: BenchConfig):
    from seedstory_core.cache import CachePolicy
    from seedstory_core.reencode import ReencodePolicy
    from seedstory_core.story import StorySettings

    if policy == "reencode_window":
        return StorySettings(policy=ReencodePolicy(window_images=cfg.window_images))
    if policy == "default":
        default = StorySettings()
        return dataclasses.replace(default, policy=dataclasses.replace(default.policy, window_images=cfg.window_images))
    return StorySettings(policy=CachePolicy(kind=policy, window_images=cfg.window_images))


def start_story(engine, feats, policy: str, cfg: BenchConfig):
    return engine.start("Tom the cat sat in the garden.", features=feats, settings=settings_for(policy, cfg))


def decoding_for(cfg: BenchConfig):
    from seedstory_core.story import DecodingSettings

    return DecodingSettings(max_sentence_tokens=cfg.sentence_tokens)


def _sync(device: str) -> None:
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
        from seedstory_core import story

        orig_fc, orig_iq = story.forward_chunk, story.image_query_pass
        probe = self

        def fc(agent, cache, embeds, kinds, **kw):
            out = orig_fc(agent, cache, embeds, kinds, **kw)
            _sync(probe.device)
            probe.events.append(("fc", len(kinds), time.perf_counter()))
            return out

        def iq(agent, cache, image, **kw):
            probe.kv_work = cache.nbytes()
            _sync(probe.device)
            t0 = time.perf_counter()
            out = orig_iq(agent, cache, image, **kw)
            _sync(probe.device)
            probe.events.append(("iq", t0, time.perf_counter()))
            return out

        story.forward_chunk, story.image_query_pass = fc, iq
        try:
            yield self
        finally:
            story.forward_chunk, story.image_query_pass = orig_fc, orig_iq

    def timed_step(self, engine, state, decoding) -> Tuple[object, Dict[str, float]]:
        self.events = []
        _sync(self.device)
        t_start = time.perf_counter()
        result = engine.step(state, decoding=decoding)
        _sync(self.device)
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


# ------------------------------------------------------------------------------------------------ measurements
def run_policy(
    engine,
    feats,
    policy: str,
    cfg: BenchConfig,
    probe: PhaseProbe,
    rep: int,
    n_frames: int,
    keep_states: Optional[Dict] = None,
) -> List[dict]:
    from seedstory_core.cache import StoryKVCache

    decoding = decoding_for(cfg)
    state = start_story(engine, feats, policy, cfg)
    rows = []
    for frame in range(1, n_frames + 1):
        prev_len = len(state.token_ids)
        result, phases = probe.timed_step(engine, state, decoding)
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
                text_tokens=len(state.token_ids) - prev_len - len(engine.image.forced_sequence),
                kv_tokens=state.kv_length,
                kv_bytes=cache.nbytes() if cache is not None else 0,
                kv_bytes_work=probe.kv_work,
                evictions=cache.meta.evictions if cache is not None else 0,
            )
        )
        if keep_states is not None and (frame in cfg.lengths or frame + 1 in cfg.lengths):
            keep_states[(policy, frame)] = state
    return rows


def measure_steps(engine, feats, cfg: BenchConfig, log=print) -> Tuple[List[dict], Dict]:
    """Interleaved repeats of full stories for every policy; returns per-step rows and the states of rep 0."""
    probe = PhaseProbe(cfg.device)
    states: Dict = {}
    rows: List[dict] = []
    cuda_peak: Dict[str, int] = {}
    with probe.installed():
        for policy in cfg.policies:  # warm-up (allocator, lazy imports, first-call overheads)
            run_policy(engine, feats, policy, cfg, probe, -1, min(cfg.warmup_steps, cfg.max_frames))
        order = list(cfg.policies)
        for rep in range(cfg.reps):
            rot = order[rep % len(order) :] + order[: rep % len(order)]
            for policy in rot:
                t0 = time.perf_counter()
                if str(cfg.device).startswith("cuda") and rep == 0:
                    torch.cuda.reset_peak_memory_stats()
                rows += run_policy(engine, feats, policy, cfg, probe, rep, cfg.max_frames, states if rep == 0 else None)
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


@torch.no_grad()
def measure_image_queries(engine, state, cfg: BenchConfig) -> Dict[str, float]:
    """One-pass image queries vs forced token-by-token decoding (BOI, IMG_0.. one token per forward, with the
    cache), on the context of ``state`` after its pending image is stored. Both include the output resampler.
    ``forced`` runs only the decoder forwards (no lm_head / logits processor per token: the cheapest possible
    token-by-token loop, so the ratio is a lower bound); ``forced_logits`` adds the lm_head per token as a real
    ``generate`` loop would."""
    from seedstory_core.generation import forward_chunk, image_query_pass, logits_at
    from seedstory_core.tokens import image_segment_kinds

    agent, image = engine.inference_model(), engine.image  # the decoder the engine itself runs
    cache = state.context.fork()
    forward_chunk(agent, cache, engine._image_embeds(state.pending_image), engine._image_kinds())
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
            _sync(cfg.device)
            t0 = time.perf_counter()
            fns[k]()
            _sync(cfg.device)
            times[k].append(time.perf_counter() - t0)
    a, b = one_pass(), forced(False)
    out = {f"{k}_s": statistics.median(v) for k, v in times.items()}
    out["max_abs_diff"] = float((a - b).abs().max())
    out["context_tokens"] = base_len
    return out


@torch.no_grad()
def measure_step_pair(engine, states: Dict, policy: str, lo: int, hi: int, cfg: BenchConfig) -> Dict[str, float]:
    """Per-step time at frame ``hi`` over frame ``lo`` for ``policy``, paired: the steps from the kept states of
    frames ``lo - 1`` and ``hi - 1`` (states are immutable, so stepping from them again *is* frame lo / hi) are
    timed alternately, ``cfg.step_pairs`` pairs; returns the median of the per-pair ratios and the
    medians of both. Robust to a CPU shared with other jobs: each pair runs back to back."""
    a_state, b_state = states.get((policy, lo - 1)), states.get((policy, hi - 1))
    if a_state is None or b_state is None or lo < 2:
        return {}
    return measure_state_pair(engine, a_state, b_state, cfg)


@torch.no_grad()
def measure_state_pair(engine, a_state, b_state, cfg: BenchConfig) -> Dict[str, float]:
    """One story step from ``a_state`` and one from ``b_state``, timed back to back (order alternating),
    ``max(3, cfg.step_pairs)`` pairs; ``ratio`` = median of (time b / time a).

    Each timed step starts from an untimed private copy of the state (:meth:`StoryKVCache.copy`): stepping twice
    from one state would make every step after the first copy the shared cache prefix first (copy-on-write), an
    O(context) cost that a story stepped in order never pays."""
    decoding = decoding_for(cfg)
    probe = PhaseProbe(cfg.device)
    ta, tb, ratios = [], [], []

    from seedstory_core.cache import StoryKVCache

    def private(state):
        if not isinstance(state.context, StoryKVCache):
            return state
        return dataclasses.replace(state, context=state.context.copy())

    with probe.installed():
        (
            probe.timed_step(engine, private(a_state), decoding),
            probe.timed_step(engine, private(b_state), decoding),
        )  # warm-up
        for r in range(max(3, cfg.step_pairs)):
            order = (a_state, b_state) if r % 2 == 0 else (b_state, a_state)
            t = {}
            for st in order:
                t[id(st)] = probe.timed_step(engine, private(st), decoding)[1]["total_s"]
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


def plain_transformers_model(engine):
    """A plain transformers ``LlamaForCausalLM`` with the engine's LLaMA config (SDPA), random weights, on the
    engine's device and dtype: the per-token floor the engine's decode is compared with."""
    from transformers import LlamaForCausalLM

    lcfg = engine.agent.config.llm.to_transformers()
    lcfg._attn_implementation = "sdpa"
    with torch.device(engine.device):
        model = LlamaForCausalLM(lcfg)
    return model.to(dtype=engine.dtype).eval()


@torch.no_grad()
def measure_decode_floor(engine, state, cfg: BenchConfig, plain=None) -> Dict[str, float]:
    """Decode time per token: the story engine vs a plain transformers ``LlamaForCausalLM`` + ``DynamicCache``.

    Same config, dtype, device, torch threads and cache length, in the same process, paired and interleaved
    (order alternating per repeat). Ours: the decode phase of ``engine.step(state)`` with
    ``max_sentence_tokens=cfg.decode_tokens`` (greedy; every token = one decoder forward on the story cache +
    lm_head + the image-token rule + argmax), divided by the tokens decoded. Plain: a ``DynamicCache`` prefilled
    (untimed) with as many random tokens as our cache holds when decoding starts, then ``cfg.decode_tokens``
    greedy steps (forward + argmax of the last logits). Returns medians and the median of per-repeat ratios.
    """
    from seedstory_core.story import DecodingSettings
    from transformers import DynamicCache

    plain = plain if plain is not None else plain_transformers_model(engine)
    decoding = DecodingSettings(max_sentence_tokens=cfg.decode_tokens)
    probe = PhaseProbe(cfg.device)
    ctx = state.kv_length + (len(engine.image.forced_sequence) if state.pending_image is not None else 0)
    vocab = engine.agent.config.llm.vocab_size
    gen = torch.Generator().manual_seed(cfg.seed)

    def ours():
        _, phases = probe.timed_step(engine, state, decoding)
        return phases["decode_s"] / cfg.decode_tokens

    def theirs():
        cache = DynamicCache()
        ids = torch.randint(0, vocab, (1, ctx), generator=gen).to(engine.device)
        out = plain(input_ids=ids, cache=cache, use_cache=True)
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(cfg.device)
        t0 = time.perf_counter()
        for _ in range(cfg.decode_tokens):
            out = plain(input_ids=tok, cache=cache, use_cache=True)
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        _sync(cfg.device)
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


def memory_child(payload: dict) -> dict:
    """Runs in a fresh process: one policy's story to ``frames``; reports ru_maxrss before and after."""
    cfg = BenchConfig(
        **{
            k: v
            for k, v in payload.items()
            if k
            in (
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
        }
    )
    torch.set_num_threads(cfg.threads)
    engine, feats = build_engine(cfg)
    decoding = decoding_for(cfg)
    with torch.no_grad():
        state = start_story(engine, feats, payload["policy"], cfg)
        state = engine.step(state, decoding=decoding).state

    def rss_kib():  # current resident set (sampled after each step); ru_maxrss is dominated by the model build
        try:
            return int(Path("/proc/self/statm").read_text().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
        except (OSError, ValueError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    base = rss_kib()
    peaks, high = {}, base
    for frame in range(2, payload["frames"] + 1):
        state = engine.step(state, decoding=decoding).state
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
    out = {}
    for policy in cfg.policies:
        if cfg.memory_policies is not None and policy not in cfg.memory_policies:
            continue
        payload = dict(
            policy=policy,
            frames=cfg.max_frames,
            lengths=list(cfg.lengths),
            preset=cfg.preset,
            device=cfg.device,
            dtype=cfg.dtype,
            sentence_tokens=cfg.sentence_tokens,
            window_images=cfg.window_images,
            seed=cfg.seed,
            threads=cfg.threads,
            merge_lora=cfg.merge_lora,
            layers=cfg.layers,
        )
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


# ------------------------------------------------------------------------------------------------ summary
def summarize(rows: List[dict], cfg: BenchConfig) -> List[dict]:
    out = []
    for policy in cfg.policies:
        cum = 0.0
        for frame in range(1, cfg.max_frames + 1):
            sel = [r for r in rows if r["policy"] == policy and r["frame"] == frame and r["rep"] >= 0]
            if not sel:
                continue
            med = {
                k: statistics.median(r[k] for r in sel)
                for k in ("total_s", "prefill_s", "decode_s", "image_s", "other_s")
            }
            cum += med["total_s"]
            if frame not in cfg.lengths:
                continue
            # robust statistic: median over repeats x the frames [N - pool + 1, N] (same eviction regime for the
            # headline frames 5 and 50; per-frame medians are in the plots and every raw row in the steps CSV)
            sel = [
                r
                for r in rows
                if r["policy"] == policy and frame - cfg.pool_frames < r["frame"] <= frame and r["rep"] >= 0
            ]
            med = {
                k: statistics.median(r[k] for r in sel)
                for k in ("total_s", "prefill_s", "decode_s", "image_s", "other_s")
            }
            totals = [r["total_s"] for r in sel]
            sel = [r for r in sel if r["frame"] == frame]
            out.append(
                dict(
                    mode=cfg.mode,
                    preset=cfg.preset,
                    policy=policy,
                    frames=frame,
                    reps=len(totals),
                    **{k: round(v, 6) for k, v in med.items()},
                    total_s_min=round(min(totals), 6),
                    total_s_max=round(max(totals), 6),
                    kv_tokens=sel[0]["kv_tokens"],
                    kv_bytes=sel[0]["kv_bytes"],
                    kv_bytes_work=sel[0]["kv_bytes_work"],
                    cumulative_s=round(cum, 4),
                )
            )
    return out


def _get(summary, policy, frames, key):
    for r in summary:
        if r["policy"] == policy and r["frames"] == frames:
            return r[key]
    return None


def compute_ratios(
    summary: List[dict],
    iq: Optional[dict],
    cfg: BenchConfig,
    decode: Optional[dict] = None,
    pairs: Optional[Dict[str, dict]] = None,
) -> Tuple[Dict[str, float], List[Tuple[str, float]]]:
    """(the five headline ratios of :data:`RATIO_KEYS`, every per-policy ratio line in print order).

    ``step50_over_step5_default`` is the paired measurement (:func:`measure_step_pair`) when available, else the
    ratio of the summary medians (also printed per policy as ``step<hi>_over_step<lo>_<policy>``)."""
    pairs = pairs or {}
    lo, hi = min(cfg.lengths), (50 if 50 in cfg.lengths else cfg.max_frames)
    lines: List[Tuple[str, float]] = []

    def div(a, b):
        return float("nan") if a is None or b in (None, 0) else a / b

    for p in cfg.policies:
        lines.append(
            (f"step{hi}_over_step{lo}_{p}", div(_get(summary, p, hi, "total_s"), _get(summary, p, lo, "total_s")))
        )
    for p in cfg.policies:
        if p != "reencode_window" and "reencode_window" in cfg.policies:
            lines.append(
                (
                    f"reencode_over_{p}_at_{hi}",
                    div(_get(summary, "reencode_window", hi, "total_s"), _get(summary, p, hi, "total_s")),
                )
            )
            lines.append(
                (
                    f"reencode_over_{p}_prefill_at_{hi}",
                    div(_get(summary, "reencode_window", hi, "prefill_s"), _get(summary, p, hi, "prefill_s")),
                )
            )
    if iq:
        lines.append(("forced_over_onepass_with_logits", div(iq["forced_logits_s"], iq["onepass_s"])))
    if "dense" in cfg.policies:
        for p in cfg.policies:
            key = "kv_bytes_work" if p == "reencode_window" else "kv_bytes"
            lines.append(
                (
                    f"kv_bytes_{p}_over_dense_at_{hi}",
                    div(_get(summary, p, hi, key), _get(summary, "dense", hi, "kv_bytes")),
                )
            )
    for p, pr in pairs.items():
        if pr and p != "reencode_over_multimodal_sink":
            lines.append((f"step{hi}_over_step{lo}_{p}_paired", pr["ratio"]))
    if pairs.get("reencode_over_multimodal_sink"):
        lines.append((f"reencode_over_multimodal_sink_at_{hi}_paired", pairs["reencode_over_multimodal_sink"]["ratio"]))
    if decode:
        lines.append(("decode_ours_ms_per_token", decode["ours_ms_per_token"]))
        lines.append(("decode_plain_transformers_ms_per_token", decode["plain_ms_per_token"]))
    mm = "multimodal_sink"
    head = {
        "decode_ms_per_token_over_plain_transformers": decode["ratio"] if decode else float("nan"),
        "step50_over_step5_default": (
            pairs["default"]["ratio"]
            if pairs.get("default")
            else div(_get(summary, "default", hi, "total_s"), _get(summary, "default", lo, "total_s"))
        ),
        "kv_bytes_default_over_dense_at_50": div(
            _get(summary, "default", hi, "kv_bytes"), _get(summary, "dense", hi, "kv_bytes")
        ),
        "reencode_over_multimodal_sink": (
            pairs["reencode_over_multimodal_sink"]["ratio"]
            if pairs.get("reencode_over_multimodal_sink")
            else div(_get(summary, "reencode_window", hi, "total_s"), _get(summary, mm, hi, "total_s"))
        ),
        "forced_over_onepass_image_queries": div(iq["forced_s"], iq["onepass_s"]) if iq else float("nan"),
    }
    return head, lines


def format_ratio_lines(head: Dict[str, float], lines: List[Tuple[str, float]]) -> List[str]:
    out = [f"{k}: {v:.4f}" for k, v in lines]
    out += [f"{k}: {head[k]:.4f}" for k in RATIO_KEYS]
    return out


# ------------------------------------------------------------------------------------------------ output
def write_csv(path: Path, rows: List[dict], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def machine_description(cfg: BenchConfig) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    dev = cfg.device
    if str(dev).startswith("cuda") and torch.cuda.is_available():
        dev = f"{dev} ({torch.cuda.get_device_name()})"
    return (
        f"{platform.system()} {platform.release()}, {cpu}, {os.cpu_count()} logical CPUs visible, "
        f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), python {platform.python_version()}, "
        f"device {dev}, dtype {cfg.dtype}"
    )


def make_plots(rows: List[dict], cfg: BenchConfig) -> List[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg.img_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    per = {}
    for p in cfg.policies:
        xs, ts, kv = [], [], []
        for frame in range(1, cfg.max_frames + 1):
            sel = [r for r in rows if r["policy"] == p and r["frame"] == frame and r["rep"] >= 0]
            if sel:
                xs.append(frame)
                ts.append(1000 * statistics.median(r["total_s"] for r in sel))
                key = "kv_bytes_work" if p == "reencode_window" else "kv_bytes"
                kv.append(sel[0][key] / 2**20)
        per[p] = (xs, ts, kv)
    for name, idx, ylabel, title in (
        ("bench_time_per_step.png", 1, "MLLM time per story step (ms, median)", "Time per step vs story length"),
        ("bench_kv_memory.png", 2, "KV cache (MiB)", "KV-cache memory vs story length"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for p, data in per.items():
            label = p + (" (transient window cache)" if p == "reencode_window" and idx == 2 else "")
            ax.plot(data[0], data[idx], label=label, lw=1.6, ls="--" if p == "reencode_window" else "-")
        ax.axvline(cfg.window_images, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"story length (frames); eviction starts after frame {cfg.window_images}")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title} — {cfg.preset} preset, {cfg.device}/{cfg.dtype}, {cfg.sentence_tokens} text tokens/step")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = cfg.img_dir / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    # phase breakdown at the longest measured length
    fig, ax = plt.subplots(figsize=(7, 3.6))
    hi = 50 if 50 in cfg.lengths else cfg.max_frames
    bottom = [0.0] * len(cfg.policies)
    for phase in ("prefill_s", "decode_s", "image_s", "other_s"):
        vals = []
        for p in cfg.policies:
            sel = [r[phase] for r in rows if r["policy"] == p and r["frame"] == hi and r["rep"] >= 0]
            vals.append(1000 * statistics.median(sel) if sel else 0)
        ax.barh(list(cfg.policies), vals, left=bottom, label=phase[:-2])
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_xlabel(f"ms per step at frame {hi} (median)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    path = cfg.img_dir / "bench_phases.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def _fmt_bytes(n) -> str:
    return "—" if n is None else f"{n / 2**20:.2f} MiB"


# ------------------------------------------------------------------------------------------------ quality hook
def quality_mode(model_dir: str, cfg: BenchConfig, log=print) -> int:
    """Quality side of Table 8 at 1x / 2x / 3x the training length with a trained bundle: ground-truth captions
    visualized under each cache policy, scored against the ground-truth frames (attribute agreement read by the
    evaluation's fixed judge, ``training/judge``; pixel L1) — the tiny-world stand-ins for the paper's CLIP score and
    FID."""
    try:
        from training.evaluate import long_story_ablation  # type: ignore
    except ImportError as exc:
        log(
            "quality mode skipped: `training.evaluate.long_story_ablation` is not available yet "
            f"({exc}). It needs the trained tiny model and its evaluation code; once "
            "`training/evaluate.py` defines long_story_ablation(model_dir, policies, length_multiples, window_images, "
            "device, dtype) -> list of row dicts, `python -m bench --model DIR` writes bench/results/quality.csv."
        )
        return 0
    from seedstory_core.cache import POLICIES

    # the official reencode_window loop is a context strategy, not a cache policy: it has no ablation row
    table = long_story_ablation(
        model_dir,
        policies=tuple(p for p in cfg.policies if p in POLICIES),
        length_multiples=(1, 2, 3),
        window_images=cfg.window_images,
        device=cfg.device,
        dtype=cfg.dtype,
    )
    rows = [
        {"policy": policy, "length": seg, **metrics} for policy, segs in table.items() for seg, metrics in segs.items()
    ]
    for r in rows:
        log(
            f"  {r['policy']:16s} {r['length']}: attribute agreement {r['attribute_agreement']:.3f}, "
            f"pixel L1 {r['pixel_l1']:.3f}"
        )
    cols = ["policy", "length", "attribute_agreement", "pixel_l1"]
    write_csv(cfg.out_dir / "quality.csv", rows, cols)
    log(f"quality: {len(rows)} rows -> {cfg.out_dir / 'quality.csv'}")
    return 0


# ------------------------------------------------------------------------------------------------ driver
def run(cfg: BenchConfig, *, command: str = "python -m bench", log=print) -> Dict[str, float]:
    t_run = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    log(
        f"seedstory bench: mode={cfg.mode} preset={cfg.preset} device={cfg.device} dtype={cfg.dtype} "
        f"policies={list(cfg.policies)} lengths={list(cfg.lengths)} reps={cfg.reps} text_tokens={cfg.sentence_tokens}"
    )
    engine, feats = build_engine(cfg)
    log(
        f"  model built ({sum(p.numel() for p in engine.agent.parameters()) / 1e6:.1f} M parameters, "
        f"merge_lora={engine.merge_lora})"
    )
    with torch.no_grad():
        rows, states = measure_steps(engine, feats, cfg, log)
        bad = [r for r in rows if r["text_tokens"] != cfg.sentence_tokens]
        if bad:
            log(f"  WARNING: {len(bad)} steps decoded != {cfg.sentence_tokens} text tokens (unequal work per step)")
        iq = None
        hi = 50 if 50 in cfg.lengths else cfg.max_frames
        iq_policy = "multimodal_sink" if ("multimodal_sink", hi) in states else cfg.policies[0]
        if cfg.extras and (iq_policy, hi) in states and states[(iq_policy, hi)].kv_length > 0:
            iq = measure_image_queries(engine, states[(iq_policy, hi)], cfg)
            log(
                f"  image queries ({iq_policy}, frame {hi}): one-pass {1000 * iq['onepass_s']:.2f} ms, "
                f"forced {1000 * iq['forced_s']:.2f} ms"
            )
        decode = None
        dec_policy = next(
            (p for p in ("default", "multimodal_sink", "dense", "window", "sink") if (p, hi) in states), None
        )
        if cfg.extras and dec_policy is not None:
            decode = measure_decode_floor(engine, states[(dec_policy, hi)], cfg)
            decode["policy"] = dec_policy
            log(
                f"  decode ({dec_policy}, frame {hi}, {decode['cache_tokens']} cached tokens): ours "
                f"{decode['ours_ms_per_token']:.3f} ms/token, "
                f"plain transformers {decode['plain_ms_per_token']:.3f} ms/token"
            )
        pairs = {}
        lo = min(cfg.lengths)
        for p in ("default", "window", "multimodal_sink"):  # window: the floor of any cache that keeps the window
            if cfg.extras and p in cfg.policies:
                pairs[p] = measure_step_pair(engine, states, p, lo, hi, cfg)
                if pairs[p]:
                    log(f"  paired steps {p}: frame {hi} / frame {lo} = {pairs[p]['ratio']:.3f}")
        mm_prev, re_prev = states.get(("multimodal_sink", hi - 1)), states.get(("reencode_window", hi - 1))
        if cfg.extras and mm_prev is not None and re_prev is not None:
            pairs["reencode_over_multimodal_sink"] = measure_state_pair(engine, mm_prev, re_prev, cfg)
            log(
                f"  paired steps frame {hi}: reencode_window / multimodal_sink = "
                f"{pairs['reencode_over_multimodal_sink']['ratio']:.3f}"
            )
    states.pop((iq_policy, hi), None)
    memory = measure_memory(cfg, log) if cfg.memory and not str(cfg.device).startswith("cuda") else {}
    summary = summarize(rows, cfg)
    head, lines = compute_ratios(summary, iq, cfg, decode, pairs)
    prefix = f"engine_{cfg.mode}_{cfg.preset}"
    write_csv(cfg.out_dir / f"{prefix}_steps.csv", rows, STEP_COLUMNS)
    (cfg.out_dir / f"{prefix}_steps.partial.csv").unlink(missing_ok=True)  # complete: the final CSV replaces it
    write_csv(cfg.out_dir / f"{prefix}_summary.csv", summary, SUMMARY_COLUMNS)
    extra = [dict(name=k, value=v) for k, v in lines] + [dict(name=k, value=head[k]) for k in RATIO_KEYS]
    if iq:
        extra += [dict(name=f"image_queries_{k}", value=v) for k, v in iq.items()]
    if decode:
        extra += [dict(name=f"decode_{k}", value=v) for k, v in decode.items() if k != "policy"]
    for p, pr in pairs.items():
        extra += [dict(name=f"paired_{p}_{k}", value=v) for k, v in pr.items()]
    for p, m in memory.items():
        extra.append(dict(name=f"rss_baseline_kib_{p}", value=m["baseline_kib"]))
        extra += [dict(name=f"rss_peak_kib_{p}_at_{f}", value=v) for f, v in m["peak_kib"].items()]
    for p, v in (states.get("cuda_peak") or {}).items():
        extra.append(dict(name=f"cuda_peak_bytes_{p}", value=v))
    elapsed = time.perf_counter() - t_run
    for key, (op, target) in RATIO_TARGETS.items():
        extra += [dict(name=f"target_op_{key}", value=op), dict(name=f"target_{key}", value=target)]
    write_csv(cfg.out_dir / f"{prefix}_ratios.csv", extra, ("name", "value"))
    write_csv(cfg.out_dir / f"{prefix}_run.csv", run_info(cfg, elapsed, command, decode), ("name", "value"))
    write_csv(
        cfg.out_dir / "paper_table8.csv",
        [
            dict(policy=k, **v, time_over_dense=round(v["time_s"] / PAPER_TABLE8["dense"]["time_s"], 4))
            for k, v in PAPER_TABLE8.items()
        ],
        ("policy", "name", "fid", "clip", "time_s", "memory_gb", "time_over_dense"),
    )
    from bench import full_size

    full_size.write(
        full_size.full_size_rows(frame=hi, sentence_tokens=cfg.sentence_tokens, window_images=cfg.window_images),
        cfg.out_dir / "full_size.csv",
    )
    if cfg.img_dir is not None:
        make_plots(rows, cfg)
    if cfg.docs_path is not None:
        from bench import docs as bench_docs

        bench_docs.write_docs(
            cfg.out_dir,
            path=cfg.docs_path,
            img_rel=os.path.relpath(cfg.img_dir, cfg.docs_path.parent) if cfg.img_dir is not None else None,
        )
    log(
        f"  wrote {cfg.out_dir}/{prefix}_*.csv"
        + (f", {cfg.docs_path}" if cfg.docs_path else "")
        + f" ({elapsed:.0f} s)"
    )
    for line in format_ratio_lines(head, lines):
        print(line, flush=True)
    return head


def run_info(cfg: BenchConfig, elapsed: float, command: str, decode: Optional[dict]) -> List[dict]:
    """(name, value) rows describing the run: settings, machine, wall time (the docs read them from the CSV)."""
    from seedstory_core.story import StorySettings

    default = StorySettings().policy
    info = dict(
        command=command,
        mode=cfg.mode,
        preset=cfg.preset,
        device=cfg.device,
        dtype=cfg.dtype,
        lengths=" ".join(str(x) for x in cfg.lengths),
        reps=cfg.reps,
        pool_frames=cfg.pool_frames,
        samples=cfg.reps * cfg.pool_frames,
        step_pairs=cfg.step_pairs,
        sentence_tokens=cfg.sentence_tokens,
        window_images=cfg.window_images,
        warmup_steps=cfg.warmup_steps,
        threads=cfg.threads,
        seed=cfg.seed,
        image_query_reps=cfg.image_query_reps,
        decode_tokens=cfg.decode_tokens,
        decode_reps=cfg.decode_reps,
        wall_s=round(elapsed),
        default_max_sink_images=default.max_sink_images,
        default_window_images=default.window_images,
        machine=machine_description(cfg),
        policies=" ".join(cfg.policies),
        decode_policy=(decode or {}).get("policy", ""),
    )
    return [dict(name=k, value=v) for k, v in info.items()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        prog="python -m bench", description="SEED-Story story-engine benchmarks (paper Table 8)"
    )
    ap.add_argument("--quick", action="store_true", help="fewer repeats (about 5 minutes on 2 CPU cores)")
    ap.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument(
        "--preset",
        default="tiny",
        choices=("tiny", "official", "full"),
        help="model size (full = official = the full-size SEED-Story config; random weights)",
    )
    ap.add_argument(
        "--random-weights",
        action="store_true",
        help="random weights (the only mode: timing does not depend on the weights; accepted for clarity)",
    )
    ap.add_argument(
        "--layers",
        type=int,
        default=None,
        help="override the decoder layer count (e.g. --preset full --layers 2 on CPU)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=("fp32", "bf16", "fp16"))
    ap.add_argument(
        "--merge-lora",
        default="auto",
        choices=("auto", "on", "off"),
        help="StoryEngine(merge_lora=...): merged LoRA inference decoder (auto = when the copy is <= 1 GiB)",
    )
    ap.add_argument("--policies", default=None, help="comma list (default: all)")
    ap.add_argument("--lengths", default=None, help="comma list of frames, e.g. 5,10,25,50")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--sentence-tokens", type=int, default=None)
    ap.add_argument("--window-images", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default 1 on CPU)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-policy child processes (peak RSS)")
    ap.add_argument(
        "--skip-extras",
        action="store_true",
        help="only the per-step story runs (no image-query, decode-floor or paired-step measurement)",
    )
    ap.add_argument(
        "--out-dir", default=None, help=f"results folder (default {DEFAULT_OUT.relative_to(REPO)}, untracked)"
    )
    ap.add_argument("--docs", default=None, help="markdown file to write (default <out-dir>/benchmarks.md; '' = none)")
    ap.add_argument("--img-dir", default=None, help="plot folder (default <out-dir>/img; '' = none)")
    ap.add_argument(
        "--update-docs",
        action="store_true",
        help="write the tracked copies: bench/results/*.csv, docs/benchmarks.md, docs/img/bench_*.png",
    )
    ap.add_argument("--model", default=None, help="trained bundle folder: quality side of Table 8 (FID/CLIP)")
    return ap.parse_args(argv)


def config_from_args(args) -> BenchConfig:
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    cfg = BenchConfig(mode=mode, **BENCH_CONFIG_BY_MODE[mode])
    cfg.preset = "full" if args.preset == "official" else args.preset
    cfg.layers = args.layers
    cfg.device = args.device
    cfg.dtype = args.dtype or ("bf16" if str(args.device).startswith("cuda") else "fp32")
    cfg.merge_lora = {"auto": None, "on": True, "off": False}[args.merge_lora]
    if args.policies:
        cfg.policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
        unknown = set(cfg.policies) - set(POLICIES)
        if unknown:
            raise SystemExit(f"unknown policies {sorted(unknown)}; choose from {POLICIES}")
    if args.lengths:
        cfg.lengths = tuple(sorted(int(x) for x in args.lengths.split(",")))
    for name in ("reps", "sentence_tokens", "window_images", "threads"):
        if getattr(args, name) is not None:
            setattr(cfg, name, getattr(args, name))
    if args.threads is None and str(cfg.device).startswith("cuda"):
        cfg.threads = torch.get_num_threads()
    if args.no_memory:
        cfg.memory = False
    if args.skip_extras:
        cfg.extras = False
    if args.update_docs:
        cfg.out_dir, cfg.docs_path, cfg.img_dir = TRACKED_RESULTS, TRACKED_DOCS, TRACKED_IMG
    if args.out_dir is not None:
        cfg.out_dir = Path(args.out_dir)
        if not args.update_docs:
            cfg.docs_path, cfg.img_dir = cfg.out_dir / "benchmarks.md", cfg.out_dir / "img"
    if args.docs is not None:
        cfg.docs_path = Path(args.docs) if args.docs else None
    if args.img_dir is not None:
        cfg.img_dir = Path(args.img_dir) if args.img_dir else None
    if mode == "smoke" and args.docs is None and not args.update_docs:
        cfg.docs_path = None
    if mode == "smoke" and args.img_dir is None and not args.update_docs:
        cfg.img_dir = None
    return cfg


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return 0
    cfg = config_from_args(args)
    if args.model:
        if args.update_docs:
            cfg.out_dir = TRACKED_RESULTS
        return quality_mode(args.model, cfg)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    argv_s = " ".join(sys.argv[1:]) if argv is None else " ".join(argv)
    run(cfg, command=f"python -m bench {argv_s}".strip(), log=log)
    return 0

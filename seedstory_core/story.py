"""The story engine: immutable story states, one story step at a time, with a real multimodal-sink KV cache.

Prompt layout exactly as training (docs/reference.md §5): ``[BOS] cap0 <img>IMG…</img>`` then
``[INST]cap_i <img>IMG…</img>`` per frame, no spaces. One step (generation mode):

1. If the previous step left an image pending, store it in the context: one forward of
   [BOI, 64 input-resampler embeddings, EOI] on top of the kept cache (the official context uses the *regressed*
   features of the generated image, docs/reference.md §3.1 step 2; pass ``context_features`` to use e.g. the ViT
   features of the rendered picture instead). The cache policy evicts right after this image completes.
2. Text: decode token by token (greedy by default like the official; sampling optional), each token prefilled on
   top of the cache. Optional user text is prefilled first (``[INST]`` + text): it steers the sentence
   (generation mode) or replaces it (visualization mode: BOI is forced right after it — the StoryGPT-V task).
   BOI is forced after ``max_sentence_tokens`` text tokens, or when the model emits EOS.
3. Image: one forward over [BOI, IMG_0..IMG_63] (the image queries; not kept in the cache), output resampler →
   (1, 256, 4096) regressed ViT features at full size (docs/reference.md §2.6).

:meth:`StoryEngine.run` is the story loop (one frame per step, with a per-frame callback that renders, reports
progress and may replace the context features). What a state keeps of its past is its policy's *context*: a
:class:`~seedstory_core.cache.StoryKVCache` for the KV-cache policies (:class:`StoryEngine`), or the window prompt
of the official loop (:class:`ReencodeStoryEngine`, :mod:`seedstory_core.reencode`: every step re-encodes
``[BOS] + window prompt`` from scratch and forces the image tokens one decode step at a time, a baseline for
benchmarks and ablations). The step itself is the same code for both; the engines differ only in how they open a
step, query the image and close the step. :func:`engine_for` gives the engine for a policy.

States are immutable values: a step never changes its input, so ComfyUI may hand one state to several branches
and keep it in its cache. KV buffers are shared copy-on-write (:mod:`seedstory_core.cache`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .cache import POLICIES, CachePolicy, StoryKVCache
from .cast import CastSheet, cast_block_ids
from .generation import (
    ImageTokenRule,
    InferenceModel,
    forward_chunk,
    image_query_pass,
    logits_at,
    new_cache,
)
from .reencode import REENCODE_WINDOW, ReencodePolicy, ReencodeWindow
from .rules import check_mode, story_texts
from .tokens import TokenKind, image_segment_kinds

#: ``StoryEngine(merge_lora=None)`` merges the LoRA deltas into an inference copy of the projections when that copy
#: takes at most this many bytes (the tiny model: ~2 MB; full-size SEED-Story in bf16: ~12.9 GB, not merged unless
#: ``merge_lora=True``).
AUTO_MERGE_MAX_BYTES = 1 << 30


class StoryCancelled(RuntimeError):
    """Raised when the cancellation check returns True; the input state is untouched and still usable."""


#: The pack's repetition penalty (the nodes' and ``python -m seedstory_core.tell``'s default): greedy decoding with it
#: did not loop on held-out StoryStream-mini seeds (docs/evaluation.md, "Decoding that does not loop").
#: ``DecodingSettings()`` keeps the official 1.0.
DEFAULT_REPETITION_PENALTY = 1.2
#: ``no_repeat_sentences``: how often a sentence that copies an earlier one is decoded again before it is kept.
MAX_SENTENCE_RETRIES = 3
#: The pack's sentence rule (the nodes' and ``tell``'s default): a generated sentence never repeats an earlier sentence
#: of its story (docs/evaluation.md, "Decoding that does not loop"). ``DecodingSettings()`` keeps it off, as the
#: official loop has no such rule.
DEFAULT_NO_REPEAT_SENTENCES = True


def sentence_key(sentence: str) -> str:
    """A sentence as compared for repeats: whitespace runs collapsed, stripped; case and punctuation kept (the
    evaluation's notion of a repeated sentence, docs/evaluation.md)."""
    return " ".join(str(sentence).split())


def text_history(token_ids: Sequence[int], kinds: Sequence[int], sentences: int = 0) -> List[int]:
    """The text tokens of a story stream, as the repetition penalty and the n-gram rule read them.

    Args:
        token_ids, kinds: the story stream after the pinned cast block (:class:`StoryState` ``token_ids``/``kinds``
            from ``cast_tokens`` on); every maximal run of :attr:`TokenKind.TEXT` tokens is one sentence (images,
            BOS and the other special tokens separate them).
        sentences: N > 0 = only the last N runs (:attr:`DecodingSettings.penalty_window`); 0 = all.

    Returns:
        The token ids, oldest first (a list of int).
    """
    runs: List[List[int]] = []
    previous_text = False
    for t, k in zip(token_ids, kinds):
        is_text = k == TokenKind.TEXT
        if is_text:
            if not previous_text:
                runs.append([])
            runs[-1].append(int(t))
        previous_text = is_text
    if sentences:
        runs = runs[-sentences:]
    return [t for run in runs for t in run]


@dataclass(frozen=True)
class DecodingSettings:
    """How the next sentence is decoded.

    Attributes:
        do_sample: False = greedy (the official default, docs/reference.md §2.6); True = sampling with the settings
            below.
        temperature, top_p, top_k, repetition_penalty: standard transformers logits warpers (top_k 0 = off).
        seed: sampling seed; the generator is seeded from (seed, story step) so branches are reproducible.
        max_sentence_tokens: text tokens before BOI is forced.
        suppress_image_tokens: ``neg_inf`` (default: IMG/EOI can never start inside text) or ``official``
            (scores set to 0.0, docs/reference.md §2.6).
        no_repeat_sentences: True = a sentence that comes out as a copy of an earlier sentence of the story
            (:func:`sentence_key`) is decoded again, starting with another first word (at most
            :data:`MAX_SENTENCE_RETRIES` times; ``StoryEngine._decode_sentence``). The user's text prefix is kept.
            False (default) = the official decoding.
        no_repeat_ngram_size: N > 0 = no N-gram of text tokens repeats within the story (transformers'
            ``NoRepeatNGramLogitsProcessor`` over the story's text history); 0 (default) = off. Measured by
            ``python -m evaluation.decoding`` (docs/evaluation.md); the pack does not use it.
        penalty_window: N > 0 = the repetition penalty and the n-gram rule look only at the text of the story's
            last N sentences (the opening one counts; the sentence being written is always included); 0 (default,
            and the pack's) = the whole story. Measured by ``python -m evaluation.decoding`` (docs/evaluation.md,
            "A penalty that forgets"); the pack does not use it.
        no_repeat_window: N > 0 = ``no_repeat_sentences`` forbids only a copy of one of the story's last N
            sentences; 0 (default, and the pack's) = of any earlier sentence. Measured likewise; not used.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    max_sentence_tokens: int = 100
    suppress_image_tokens: str = "neg_inf"
    no_repeat_sentences: bool = False
    no_repeat_ngram_size: int = 0
    penalty_window: int = 0
    no_repeat_window: int = 0

    def __post_init__(self):
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_sentence_tokens < 0 or self.repetition_penalty <= 0:
            raise ValueError("top_k and max_sentence_tokens must be >= 0 and repetition_penalty > 0")
        if not isinstance(self.no_repeat_sentences, bool):
            raise ValueError(f"no_repeat_sentences must be True or False, got {self.no_repeat_sentences!r}")
        if not isinstance(self.no_repeat_ngram_size, int) or self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size must be an int >= 0, got {self.no_repeat_ngram_size!r}")
        for name in ("penalty_window", "no_repeat_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0 (sentences; 0 = the whole story), got {value!r}")


#: The pack's default cap on sink images (``CachePolicy.max_sink_images`` of ``StorySettings()``): the multimodal
#: sink keeps the BOI/EOI-neighbour tokens of only the most recent evicted images, so the cache is bounded however
#: long the story runs. Chosen with the long-story ablation (docs/benchmarks.md, ``python -m bench.cap_ablation``).
#: ``CachePolicy()`` itself keeps the paper's uncapped rule (``max_sink_images=None``).
DEFAULT_MAX_SINK_IMAGES = 2


def default_policy() -> CachePolicy:
    """The pack's default cache policy: multimodal sink, W=8 images, the sink tokens of the last
    :data:`DEFAULT_MAX_SINK_IMAGES` evicted images (bounded)."""
    return CachePolicy(kind="multimodal_sink", max_sink_images=DEFAULT_MAX_SINK_IMAGES)


#: The context policies a story can use, the Story Settings node's ``cache_policy`` choices: the KV-cache policies
#: (:data:`seedstory_core.cache.POLICIES`, from the one that keeps the least structure to the paper's default,
#: listed default first) and the official re-encode loop.
POLICY_CHOICES = tuple(reversed(POLICIES)) + (REENCODE_WINDOW,)


@dataclass(frozen=True)
class StorySettings:
    """Story-level settings fixed at :meth:`StoryEngine.start`.

    Attributes:
        policy: what the story keeps of its past for the next step: a KV-cache policy
            (:class:`~seedstory_core.cache.CachePolicy`; default :func:`default_policy`, the multimodal sink capped
            at :data:`DEFAULT_MAX_SINK_IMAGES` sink images, bounded; the paper's uncapped rule is
            ``CachePolicy(kind="multimodal_sink")``), or :class:`~seedstory_core.reencode.ReencodePolicy` (the
            official loop: no cache, the window prompt re-encoded every step; run by :class:`ReencodeStoryEngine`).
    """

    policy: Union[CachePolicy, ReencodePolicy] = field(default_factory=default_policy)

    def to_dict(self) -> dict:
        return {"policy": self.policy.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> "StorySettings":
        """Inverse of :meth:`to_dict`."""
        policy = dict(data.get("policy", {}))
        if policy.get("kind") == REENCODE_WINDOW:
            return cls(policy=ReencodePolicy.from_dict(policy))
        return cls(policy=CachePolicy.from_dict(policy))

    @classmethod
    def for_choice(cls, choice: str, **policy_fields) -> "StorySettings":
        """Settings for one of :data:`POLICY_CHOICES` with the given :class:`CachePolicy` fields (the re-encode
        loop takes only ``window_images``).

        Raises:
            ValueError: an unknown choice or field value.
        """
        if choice == REENCODE_WINDOW:
            return cls(policy=ReencodePolicy(window_images=policy_fields.get("window_images", 8)))
        if choice not in POLICIES:
            raise ValueError(f"unknown cache policy {choice!r}; choose one of {POLICY_CHOICES}")
        return cls(policy=CachePolicy(kind=choice, **policy_fields))


#: Story contexts by the name saved states record (see :meth:`StoryState.save`).
_CONTEXT_TYPES = {"kv_cache": StoryKVCache, REENCODE_WINDOW: ReencodeWindow}
STATE_FORMAT = "seedstory-state/2"


@dataclass(frozen=True, eq=False)
class StoryState:
    """A story so far (immutable).

    Attributes:
        settings: :class:`StorySettings`.
        model_key: fingerprint of the agent/tokenizer that made it (a step with another model is refused).
        token_ids, kinds: the whole story stream (never windowed), ids and :class:`TokenKind` values.
        sentences: the opening sentence and every generated/given sentence (cleaned, without ``[INST]``).
        step: number of completed story steps (frames generated).
        context: what the policy keeps of the story for the next step: the
            :class:`~seedstory_core.cache.StoryKVCache` (KV-cache policies), or the
            :class:`~seedstory_core.reencode.ReencodeWindow` prompt (the official re-encode loop).
        next_logits: (V,) float32 logits after the last stored token, or None while an image is pending (and
            always None for the re-encode loop, which computes them at the next step).
        pending_image: (1, T, D) regressed features of the last generated image, not yet in the context.
        last_features: (1, T, D) features of the newest image (the start image after :meth:`StoryEngine.start`).
        cast: the story's :class:`~seedstory_core.cast.CastSheet` (None without one).
        cast_tokens: how many tokens at the start of ``token_ids`` are pinned (BOS + the cast block); 0 without a
            cast sheet. Every policy keeps them (:mod:`seedstory_core.cast`).
    """

    settings: StorySettings
    model_key: str
    token_ids: Tuple[int, ...]
    kinds: Tuple[int, ...]
    sentences: Tuple[str, ...]
    step: int
    context: Union[StoryKVCache, ReencodeWindow]
    next_logits: Optional[torch.Tensor]
    pending_image: Optional[torch.Tensor]
    last_features: torch.Tensor
    cast: Optional[CastSheet] = None
    cast_tokens: int = 0

    # ------------------------------------------------------------------ reporting
    def get_ram_usage(self) -> int:
        """Bytes held by this state's tensors (context, features, logits). Used by ComfyUI's RAM cache."""
        total = self.context.nbytes()
        seen = set()
        for t in (self.next_logits, self.pending_image, self.last_features, *(self.cast.features if self.cast else ())):
            if t is not None and t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total

    @property
    def kv_length(self) -> int:
        """Tokens currently stored in the KV cache (0 for the re-encode loop, which keeps none)."""
        return self.context.length

    @property
    def num_images(self) -> int:
        """Images in the story so far (the start image and every generated one; the cast sheet's are not counted)."""
        return self.kinds[self.cast_tokens :].count(TokenKind.EOI)

    def __repr__(self) -> str:
        return (
            f"StoryState(step={self.step}, tokens={len(self.token_ids)}, kv={self.kv_length}, "
            f"policy={self.settings.policy.kind})"
        )

    # ------------------------------------------------------------------ devices and persistence
    def to(self, device=None, dtype=None) -> "StoryState":
        """A copy with every tensor on ``device`` (float tensors optionally cast to ``dtype``)."""

        def mv(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)

        return dataclasses.replace(
            self,
            context=self.context.to(device, dtype),
            next_logits=None if self.next_logits is None else self.next_logits.to(device=device),
            pending_image=mv(self.pending_image),
            last_features=mv(self.last_features),
            cast=None if self.cast is None else self.cast.to(device, dtype),
        )

    def save(self, path) -> Path:
        """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (everything else); returns the JSON path."""
        base = Path(path)
        if base.suffix in (".json", ".safetensors"):
            base = base.with_suffix("")
        base.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"last_features": self.last_features.contiguous()}
        if self.next_logits is not None:
            tensors["next_logits"] = self.next_logits.contiguous()
        pending_is_last = (
            self.pending_image is not None and self.pending_image.data_ptr() == self.last_features.data_ptr()
        )
        if self.pending_image is not None and not pending_is_last:
            tensors["pending_image"] = self.pending_image.contiguous()
        context_type = next(name for name, cls in _CONTEXT_TYPES.items() if isinstance(self.context, cls))
        tensors.update({f"context.{k}": v for k, v in self.context.tensors().items()})
        for i, f in enumerate(self.cast.features if self.cast is not None else ()):
            tensors[f"cast.{i}"] = f.contiguous()
        inv_freq = getattr(self.context, "inv_freq", None)
        if inv_freq is not None:
            tensors["context_inv_freq"] = inv_freq.to(torch.float64)
        meta = {
            "format": STATE_FORMAT,
            "settings": self.settings.to_dict(),
            "model_key": self.model_key,
            "token_ids": list(self.token_ids),
            "kinds": list(self.kinds),
            "sentences": list(self.sentences),
            "step": self.step,
            "pending_is_last": pending_is_last,
            "context_type": context_type,
            "context": self.context.meta_dict(),
            "cast": None if self.cast is None else list(self.cast.names),
            "cast_tokens": self.cast_tokens,
        }
        save_file({k: v.detach().cpu() for k, v in tensors.items()}, str(base.with_suffix(".safetensors")))
        json_path = base.with_suffix(".json")
        json_path.write_text(json.dumps(meta))
        return json_path

    @classmethod
    def load(cls, path, device=None) -> "StoryState":
        """Read a state written by :meth:`save`.

        Raises:
            ValueError: the files are not a seedstory story state.
        """
        base = Path(path)
        if base.suffix in (".json", ".safetensors"):
            base = base.with_suffix("")
        meta = json.loads(base.with_suffix(".json").read_text())
        tensors = load_file(str(base.with_suffix(".safetensors")), device=str(device or "cpu"))
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(
                f"{base}.json is not a seedstory story state (format {meta.get('format')!r}, expected {STATE_FORMAT!r})"
            )
        context_t = {k[len("context.") :]: v for k, v in tensors.items() if k.startswith("context.")}
        context_cls = _CONTEXT_TYPES[meta["context_type"]]
        context = context_cls.from_saved(meta["context"], context_t, tensors.get("context_inv_freq"))
        return cls(
            settings=StorySettings.from_dict(meta["settings"]),
            model_key=meta["model_key"],
            token_ids=tuple(meta["token_ids"]),
            kinds=tuple(meta["kinds"]),
            sentences=tuple(meta["sentences"]),
            step=int(meta["step"]),
            context=context,
            next_logits=tensors.get("next_logits"),
            pending_image=tensors["last_features"] if meta.get("pending_is_last") else tensors.get("pending_image"),
            last_features=tensors["last_features"],
            cast=None
            if not meta.get("cast")
            else CastSheet(tuple(meta["cast"]), tuple(tensors[f"cast.{i}"] for i in range(len(meta["cast"])))),
            cast_tokens=int(meta.get("cast_tokens", 0)),
        )


@dataclass(frozen=True)
class StepResult:
    """Output of one story step: the new state, the sentence (cleaned, no ``[INST]``) and the image features."""

    state: StoryState
    sentence: str
    features: torch.Tensor  # (1, T, D)
    forced_boi: bool = False


class StoryEngine:
    """Runs SEED-Story stories: :meth:`start`, :meth:`step`, :meth:`run`.

    Args:
        agent: :class:`~seedstory_core.agent.SeedStoryAgent` (LoRA LLaMA + resamplers).
        tokenizer: :class:`~seedstory_core.tokenizer.SeedStoryTokenizer` with the 66 image tokens.
        visual_tokenizer: optional :class:`~seedstory_core.visual_tokenizer.QwenVisualTokenizer` (needed to start
            from a picture rather than from features).
    """

    #: The policies this engine runs (:func:`engine_for` picks the engine for a policy).
    policy_type = CachePolicy

    def __init__(self, agent, tokenizer, visual_tokenizer=None, *, merge_lora: Optional[bool] = None):
        self.agent = agent
        self.tokenizer = tokenizer
        self.visual_tokenizer = visual_tokenizer
        if merge_lora is None:
            merge_lora = agent.lora_merge_bytes() <= AUTO_MERGE_MAX_BYTES
        self.merge_lora = bool(merge_lora)
        self._run = self.inference_model()
        self.image = tokenizer.image_ids
        n_img = agent.config.image_tokens.num_img_tokens
        if len(self.image.img) != n_img:
            raise ValueError(f"tokenizer has {len(self.image.img)} IMG tokens but the agent expects {n_img}")
        vocab = agent.lm_head.weight.shape[0]
        if max(self.image.forced_sequence) >= vocab:
            raise ValueError(
                f"image token ids reach {max(self.image.forced_sequence)} but the agent's vocabulary has {vocab} rows"
            )
        self.model_key = self._fingerprint()

    # ------------------------------------------------------------------ helpers
    def inference_model(self) -> InferenceModel:
        """The agent as the decoding primitives see it: its decoder replaced by the merged-LoRA inference decoder
        (:meth:`~seedstory_core.agent.SeedStoryAgent.inference_decoder`) when ``merge_lora``; re-checked (and
        rebuilt if the agent's weights changed) at every :meth:`start` / :meth:`step`."""
        return InferenceModel(self.agent, self.agent.inference_decoder(self.merge_lora))

    def _fingerprint(self) -> str:
        cfg = json.dumps(self.agent.config.to_dict(), sort_keys=True, default=str)
        head = self.agent.lm_head.weight
        probe = head[: min(4, head.shape[0])].detach().float().cpu().flatten()[:64].tolist()
        return hashlib.sha1((cfg + repr(self.image) + repr([round(x, 5) for x in probe])).encode()).hexdigest()[:16]

    @property
    def device(self) -> torch.device:
        return self.agent.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.agent.lm_head.weight.dtype

    def _check(self, state: StoryState) -> None:
        if not isinstance(state, StoryState):
            raise TypeError(
                f"expected a StoryState (from StoryEngine.start or a previous step), got {type(state).__name__}"
            )
        if state.model_key != self.model_key:
            raise ValueError(
                "this story state was made with a different SEED-Story model (fingerprint "
                f"{state.model_key} vs {self.model_key}); continue it with the same agent and tokenizer"
            )
        self._check_policy(state.settings.policy)

    def _check_policy(self, policy) -> None:
        if not isinstance(policy, self.policy_type):
            raise ValueError(
                f"{type(self).__name__} runs {self.policy_type.__name__} stories, but this one uses the "
                f"{getattr(policy, 'kind', type(policy).__name__)!r} policy; get the engine for it with "
                "seedstory_core.story.engine_for(policy, ...)"
            )

    def _features(self, features: torch.Tensor) -> torch.Tensor:
        if not isinstance(features, torch.Tensor) or features.dim() not in (2, 3):
            raise ValueError(
                f"image features must be a (1, T, D) or (T, D) tensor, got {getattr(features, 'shape', type(features))}"
            )
        if features.dim() == 2:
            features = features.unsqueeze(0)
        expected_d = self.agent.config.input_resampler.kv_dim
        if features.shape[0] != 1 or features.shape[-1] != expected_d:
            raise ValueError(
                f"image features must have shape (1, T, {expected_d}) (one image of visual-tokenizer features), "
                f"got {tuple(features.shape)}"
            )
        return features.to(device=self.device, dtype=self.dtype)

    def _embed(self, ids: Sequence[int]) -> torch.Tensor:
        return self.agent.embed_tokens(torch.tensor([list(ids)], dtype=torch.long, device=self.device))

    def image_embeds(self, features: torch.Tensor) -> torch.Tensor:
        """[BOI, input_resampler(features) (n rows), EOI] embeddings, (1, n+2, D)."""
        boi_eoi = self._embed([self.image.boi, self.image.eoi])
        img = self.agent.input_resampler(features)
        return torch.cat([boi_eoi[:, :1], img, boi_eoi[:, 1:]], dim=1)

    def image_kinds(self) -> List[int]:
        return image_segment_kinds(len(self.image.img))

    def _image_ids(self) -> List[int]:
        return self.image.forced_sequence

    def _encode_start_image(self, image) -> torch.Tensor:
        if self.visual_tokenizer is None:
            raise ValueError(
                "start() got an image but the engine has no visual tokenizer; pass features or a visual tokenizer"
            )
        return self.visual_tokenizer.encode_images(image)[:1]

    def _text_ids(self, text: str, *, instruction: bool) -> List[int]:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("story text must be a non-empty string")
        text = text.strip()
        return list(self.tokenizer.encode(("[INST]" + text) if instruction else text))

    def _clean(self, ids: Sequence[int]) -> str:
        tok = self.tokenizer
        text = tok.clean_text(tok.decode(list(ids)))
        return tok.strip_inst(text).strip()

    # ------------------------------------------------------------------ start
    @torch.no_grad()
    def start(
        self,
        text: str,
        *,
        image=None,
        features: Optional[torch.Tensor] = None,
        settings: Optional[StorySettings] = None,
        cast: Optional[CastSheet] = None,
    ) -> StoryState:
        """Begin a story from a starting image (or its visual-tokenizer features) and its sentence.

        Args:
            text: the opening sentence (caption 0, no ``[INST]``; docs/reference.md §5).
            image: a picture (ComfyUI IMAGE tensor / PIL) — encoded with the visual tokenizer; or
            features: (1, T, D) visual-tokenizer features of the start image.
            settings: :class:`StorySettings` (default ``StorySettings()``); its policy must be one this engine runs
                (see :func:`engine_for`).
            cast: a :class:`~seedstory_core.cast.CastSheet`: its block ``<name>:<img>…</img>`` per character goes
                between BOS and the opening sentence and is pinned (every policy keeps it; docs/characters.md).

        Returns the initial :class:`StoryState` with ``[BOS] (cast block) cap0 <img>…</img>`` in its context.

        Raises:
            ValueError: bad text, features, image or cast features; a policy this engine does not run.
        """
        settings = settings if settings is not None else StorySettings()
        self._check_policy(settings.policy)
        if (image is None) == (features is None):
            raise ValueError("start() needs exactly one of image= or features=")
        if cast is not None and not isinstance(cast, CastSheet):
            raise ValueError(f"cast must be a seedstory_core.cast.CastSheet, got {type(cast).__name__}")
        feats = self._features(self._encode_start_image(image) if image is not None else features)
        if cast is not None:
            cast = CastSheet(cast.names, tuple(self._features(f) for f in cast.features))
        self._run = self.inference_model()
        text_ids = self._text_ids(text, instruction=False)
        cast_ids, cast_kinds, _ = cast_block_ids(self.tokenizer, cast.names) if cast is not None else ([], [], [])
        ids = [self.tokenizer.bos_id] + cast_ids + text_ids + self._image_ids()
        kinds = [TokenKind.BOS] + cast_kinds + [TokenKind.TEXT] * len(text_ids) + self.image_kinds()
        pin = 1 + len(cast_ids) if cast is not None else 0
        images = list(cast.features if cast is not None else ()) + [feats]
        context, logits = self._start_context(ids, kinds, images, settings.policy, pin)
        return StoryState(
            settings=settings,
            model_key=self.model_key,
            token_ids=tuple(ids),
            kinds=tuple(kinds),
            sentences=(text.strip(),),
            step=0,
            context=context,
            next_logits=logits,
            pending_image=None,
            last_features=feats,
            cast=cast,
            cast_tokens=pin,
        )

    # ------------------------------------------------------------------ step
    @torch.no_grad()
    def step(
        self,
        state: StoryState,
        *,
        text: Optional[str] = None,
        mode: str = "generation",
        decoding: DecodingSettings = DecodingSettings(),
        context_features: Optional[torch.Tensor] = None,
        cancel: Optional[Callable[[], bool]] = None,
        on_text: Optional[Callable[[str], None]] = None,
    ) -> StepResult:
        """Write the next sentence and regress the next image's features.

        Args:
            state: the story so far (not modified).
            text: user text. Generation mode: optional, steers the sentence (prefilled after ``[INST]``, the model
                continues it). Visualization mode: required, the sentence itself (the model only draws).
            mode: one of :data:`seedstory_core.rules.STORY_MODES`.
            decoding: :class:`DecodingSettings`.
            context_features: (1, T, D) features to store for the previous step's image instead of its regressed
                features (e.g. the visual tokenizer's features of the rendered picture).
            cancel: polled between decoder calls; returning True raises :class:`StoryCancelled`.
            on_text: called with the sentence so far after every new text token (streaming).

        Returns :class:`StepResult` (new state, sentence, (1, T, D) features).

        Raises:
            TypeError, ValueError: a state of another model or policy, bad mode, text or features.
            StoryCancelled: ``cancel()`` returned True (the input state is unchanged).
        """
        self._check(state)
        check_mode(mode)
        if mode == "visualization" and (text is None or not str(text).strip()):
            raise ValueError("visualization mode needs the sentence to draw (text=...)")
        if context_features is not None and state.pending_image is None:
            raise ValueError("context_features replaces the previous step's image, but this state has no pending image")

        def check_cancel():
            if cancel is not None and cancel():
                raise StoryCancelled("story step cancelled; the input state is unchanged")

        check_cancel()
        self._run = self.inference_model()
        pending = None
        if state.pending_image is not None:
            pending = self._features(context_features) if context_features is not None else state.pending_image
        cache, logits, carry = self._open_step(state, pending)
        check_cancel()

        sentence_ids: List[int] = []
        forced_boi = False
        if text is not None and str(text).strip():
            prefix = self._text_ids(str(text), instruction=True)
            hidden = forward_chunk(self._run, cache, self._embed(prefix), [TokenKind.TEXT] * len(prefix))
            logits = logits_at(self._run, hidden[0, -1])
            sentence_ids.extend(prefix)
            if on_text is not None:
                on_text(self._clean(sentence_ids))
        if mode == "generation":
            forced_boi, cache = self._decode_sentence(
                state, cache, logits, sentence_ids, decoding, check_cancel, on_text
            )
        check_cancel()
        features = self._image_queries(cache)
        check_cancel()

        new_ids = state.token_ids + tuple(sentence_ids) + tuple(self._image_ids())
        new_kinds = state.kinds + (TokenKind.TEXT,) * len(sentence_ids) + tuple(self.image_kinds())
        sentence = self._clean(sentence_ids)
        new_state = dataclasses.replace(
            state,
            token_ids=new_ids,
            kinds=new_kinds,
            sentences=state.sentences + (sentence,),
            step=state.step + 1,
            pending_image=features,
            last_features=features,
            next_logits=None,
            context=self._close_step(cache, carry, sentence_ids),
        )
        return StepResult(new_state, sentence, features, forced_boi)

    # ------------------------------------------------------------------ the context (KV-cache policies)
    def _prompt_embeds(self, ids: Sequence[int], kinds: Sequence[int], images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(1, n, D) input embeddings of a prompt: token embeddings with every image's IMG positions (in order)
        replaced by the input resampler's output for ``images`` ((1, T, D) features each)."""
        embeds = self._embed(ids)
        img_positions = [i for i, k in enumerate(kinds) if k == TokenKind.IMG]
        if images:
            img_embeds = self.agent.input_resampler(torch.cat(list(images), dim=0)).reshape(-1, embeds.shape[-1])
            embeds = embeds.clone()
            embeds[0, img_positions] = img_embeds.to(embeds.dtype)
        return embeds

    def _start_context(self, ids, kinds, images, policy, pin: int = 0):
        """Prefill ``[BOS] (cast block) cap0 <img>…</img>`` into a new cache, the first ``pin`` tokens pinned:
        (cache, logits after EOI)."""
        cache = new_cache(self._run, policy)
        if len(images) == 1:
            embeds = torch.cat([self._embed(ids[: -len(self._image_ids())]), self.image_embeds(images[0])], dim=1)
        else:
            embeds = self._prompt_embeds(ids, kinds, images)
        hidden = forward_chunk(self._run, cache, embeds, kinds, pin=pin)
        return cache, logits_at(self._run, hidden[0, -1])

    def _open_step(self, state: StoryState, pending: Optional[torch.Tensor]):
        """The working cache of a step: a fork of the kept one with the pending image stored (the policy evicts
        right after it). Returns (cache, logits for the first text token, carry for :meth:`_close_step`)."""
        cache = state.context.fork()
        if pending is None:
            return cache, state.next_logits, None
        hidden = forward_chunk(self._run, cache, self.image_embeds(pending), self.image_kinds())
        return cache, logits_at(self._run, hidden[0, -1]), None

    def _image_queries(self, cache: StoryKVCache) -> torch.Tensor:
        """(1, T, D) regressed features: the image queries in one forward, not kept in the cache."""
        return image_query_pass(self._run, cache, self.image, commit=False)["features"]

    def _close_step(self, cache: StoryKVCache, carry, sentence_ids: List[int]):
        """The context the new state keeps: the working cache, which holds the sentence."""
        return cache

    def _decode_sentence(self, state, cache, logits, sentence_ids, decoding: DecodingSettings, check_cancel, on_text):
        """Decode the sentence (:meth:`_decode_text`), under ``decoding.no_repeat_sentences`` again while it copies an
        earlier sentence of the story. Returns (BOI forced, the working cache holding the kept attempt).

        The rule: a finished sentence equal to an earlier one (:func:`sentence_key`) is discarded and decoded again
        from the same point with its first own word's token banned at that position (the first token after the
        user's text and the ``[INST]`` the model writes), so the model starts the sentence another way; at most
        :data:`MAX_SENTENCE_RETRIES` times, then the last attempt is kept. Each attempt works on a fork of the cache
        (copy-on-write, docs/architecture.md), so a discarded attempt leaves nothing behind.
        """
        if not decoding.no_repeat_sentences:
            return self._decode_text(state, cache, logits, sentence_ids, decoding, check_cancel, on_text), cache
        window = decoding.no_repeat_window
        earlier = {sentence_key(s) for s in (state.sentences[-window:] if window else state.sentences)}
        given = list(sentence_ids)
        inst = list(self.tokenizer.inst_ids)
        bans: Dict[int, set] = {}
        for attempt in range(MAX_SENTENCE_RETRIES + 1):
            ids, work = list(given), cache.fork()
            forced = self._decode_text(state, work, logits, ids, decoding, check_cancel, on_text, bans=bans)
            if sentence_key(self._clean(ids)) not in earlier or attempt == MAX_SENTENCE_RETRIES:
                break
            first = len(given) + (len(inst) if ids[len(given) : len(given) + len(inst)] == inst else 0)
            if first >= len(ids):  # nothing of its own to change (the user's text is the whole sentence)
                break
            bans.setdefault(first, set()).add(ids[first])
        sentence_ids[:] = ids
        return forced, work

    def _decode_text(
        self, state, cache, logits, sentence_ids, decoding: DecodingSettings, check_cancel, on_text, bans=None
    ) -> bool:
        """Decode text tokens until BOI (appending them to ``sentence_ids``); returns True if BOI was forced.
        ``bans``: {position in ``sentence_ids``: token ids that may not be chosen there}."""
        rule = ImageTokenRule(self.image, suppress=decoding.suppress_image_tokens)
        processors = self.logits_processors(decoding)
        generator = None
        if decoding.do_sample:
            generator = torch.Generator(device="cpu").manual_seed((decoding.seed * 1_000_003 + state.step) % (2**63))
        history = (  # the story's text (the cast block's names are not story text)
            text_history(
                state.token_ids[state.cast_tokens :], state.kinds[state.cast_tokens :], decoding.penalty_window
            )
            if decoding.repetition_penalty != 1.0 or decoding.no_repeat_ngram_size
            else []
        )
        last = self.image.eoi
        generated_text = 0
        while True:
            check_cancel()
            if generated_text >= decoding.max_sentence_tokens:
                return True
            scores = rule(last, logits)
            if processors is not None:
                context = torch.tensor([history + sentence_ids], dtype=torch.long)
                scores = processors(context, scores.unsqueeze(0).cpu())[0]
            if bans and len(sentence_ids) in bans:
                scores = scores.clone()
                scores[torch.tensor(sorted(bans[len(sentence_ids)]), dtype=torch.long, device=scores.device)] = float(
                    "-inf"
                )
            if decoding.do_sample:
                probs = torch.softmax(scores.float().cpu(), dim=-1)
                token = int(torch.multinomial(probs, 1, generator=generator))
            else:
                token = int(scores.argmax())
            if token == self.image.boi:
                return False
            if token == self.tokenizer.eos_id:
                return True
            sentence_ids.append(token)
            generated_text += 1
            hidden = forward_chunk(self._run, cache, self._embed([token]), [TokenKind.TEXT])
            logits = logits_at(self._run, hidden[0, -1])
            last = token
            if on_text is not None:
                on_text(self._clean(sentence_ids))

    @staticmethod
    def logits_processors(decoding: DecodingSettings) -> Optional[LogitsProcessorList]:
        """The transformers logits processors of ``decoding``, applied to every text token's scores over the story's
        text history (repetition penalty, then the sampling warpers, then the no-repeat n-gram rule), or None when
        there are none (plain greedy)."""
        procs = LogitsProcessorList()
        if decoding.repetition_penalty != 1.0:
            procs.append(RepetitionPenaltyLogitsProcessor(decoding.repetition_penalty))
        if decoding.do_sample:
            if decoding.temperature != 1.0:
                procs.append(TemperatureLogitsWarper(decoding.temperature))
            if decoding.top_k > 0:
                procs.append(TopKLogitsWarper(decoding.top_k))
            if decoding.top_p < 1.0:
                procs.append(TopPLogitsWarper(decoding.top_p))
        if decoding.no_repeat_ngram_size:
            procs.append(NoRepeatNGramLogitsProcessor(decoding.no_repeat_ngram_size))
        return procs if len(procs) else None

    # ------------------------------------------------------------------ run
    def run(
        self,
        state: StoryState,
        n_steps: int,
        *,
        texts: Optional[Sequence[Optional[str]]] = None,
        mode: str = "generation",
        decoding: DecodingSettings = DecodingSettings(),
        cancel: Optional[Callable[[], bool]] = None,
        on_text: Optional[Callable[[int, str], None]] = None,
        on_frame: Optional[Callable[[int, int, StepResult], Optional[torch.Tensor]]] = None,
    ) -> Tuple[StoryState, List[StepResult]]:
        """The story loop: ``n_steps`` steps from ``state``, one frame each.

        Used by the Generate Story node, ``python -m seedstory_core.tell`` and the evaluation.

        Args:
            state: the story so far (not modified).
            n_steps: frames to add (>= 0).
            texts: per step, the user text of :meth:`step` or None: in generation mode optional beginnings of the
                sentences (None or '' = free); in visualization mode the sentences to draw (one per step, required).
            mode: one of :data:`seedstory_core.rules.STORY_MODES`, for every step.
            decoding: :class:`DecodingSettings`.
            cancel: polled inside every step; returning True raises :class:`StoryCancelled`. A callback may also
                raise its own exception (ComfyUI's interrupt does), which propagates unchanged.
            on_text: ``on_text(frame, sentence_so_far)`` after every decoded token (streaming), frame 1-based.
            on_frame: ``on_frame(frame, n_steps, result)`` after each step, frame 1-based: render the frame, report
                progress. It may return (1, T, D) features to store in the context for this frame instead of the
                regressed ones (e.g. the visual tokenizer's features of the rendered picture, or of the true frame
                for teacher forcing), or None.

        Returns:
            (final state, the :class:`StepResult` of every step).

        Raises:
            ValueError: ``n_steps`` < 0, too few texts in visualization mode, bad inputs of a step.
            StoryCancelled: see ``cancel``; the input state is untouched.
        """
        if n_steps < 0:
            raise ValueError("n_steps must be >= 0")
        check_mode(mode)
        texts = story_texts(texts, n_steps, mode, captions_name="texts", steps_name="n_steps") if n_steps else []
        results: List[StepResult] = []
        override = None
        for i in range(n_steps):
            text = texts[i] if i < len(texts) and texts[i] and str(texts[i]).strip() else None
            streaming = (lambda partial, frame=i + 1: on_text(frame, partial)) if on_text is not None else None
            result = self.step(
                state,
                text=text,
                mode=mode,
                decoding=decoding,
                context_features=override,
                cancel=cancel,
                on_text=streaming,
            )
            results.append(result)
            state = result.state
            override = on_frame(i + 1, n_steps, result) if on_frame is not None else None
        return state, results


class ReencodeStoryEngine(StoryEngine):
    """The official story loop (gen_george.py, docs/reference.md §3.1): no KV cache is kept between steps.

    Every step rebuilds ``[BOS] + window prompt`` (the last ``window_images`` images and their captions), encodes
    it from scratch, and forces the 64 IMG tokens + EOI one decode step at a time, scoring each as the official
    ``generate`` does. Runs stories whose policy is a :class:`~seedstory_core.reencode.ReencodePolicy`; the
    baseline of the benchmarks and ablations.
    """

    policy_type = ReencodePolicy

    def _start_context(self, ids, kinds, images, policy, pin: int = 0):
        pinned = max(0, int(pin) - 1)  # the cast block without BOS
        return ReencodeWindow(tuple(ids[1:]), tuple(kinds[1:]), tuple(images), pinned, len(images) - 1), None

    def _open_step(self, state: StoryState, pending: Optional[torch.Tensor]):
        """Re-encode ``[BOS] + window prompt`` (with the pending image, oldest images dropped) into a fresh dense
        cache (docs/reference.md §3.1 steps 4-6). Returns (cache, logits, the new window)."""
        window = state.context
        p, pi = window.pinned, window.pinned_images  # the cast block: re-encoded every step, never dropped
        p_ids, p_kinds, p_feats = list(window.ids[:p]), list(window.kinds[:p]), list(window.features[:pi])
        w_ids, w_kinds, w_feats = list(window.ids[p:]), list(window.kinds[p:]), list(window.features[pi:])
        if pending is not None:
            w_ids += self._image_ids()
            w_kinds += self.image_kinds()
            w_feats.append(pending)
        inst = list(self.tokenizer.inst_ids)
        while len(w_feats) > state.settings.policy.window_images:
            cut = w_kinds.index(TokenKind.EOI) + 1
            w_ids, w_kinds = w_ids[cut:], w_kinds[cut:]
            if inst and w_ids[: len(inst)] == inst:  # the first remaining caption has no [INST] (as in training)
                w_ids, w_kinds = w_ids[len(inst) :], w_kinds[len(inst) :]
            w_feats.pop(0)
        cache = new_cache(self._run, CachePolicy(kind="dense"))
        ids = [self.tokenizer.bos_id] + p_ids + w_ids
        kinds = [TokenKind.BOS] + p_kinds + w_kinds
        embeds = self._prompt_embeds(ids, kinds, p_feats + w_feats)
        hidden = forward_chunk(self._run, cache, embeds, kinds)
        carry = ReencodeWindow(tuple(p_ids + w_ids), tuple(p_kinds + w_kinds), tuple(p_feats + w_feats), p, pi)
        return cache, logits_at(self._run, hidden[0, -1]), carry

    def _image_queries(self, cache: StoryKVCache) -> torch.Tensor:
        return image_query_pass(self._run, cache, self.image, commit=False, forced=True)["features"]

    def _close_step(self, cache: StoryKVCache, carry: ReencodeWindow, sentence_ids: List[int]):
        return ReencodeWindow(
            carry.ids + tuple(sentence_ids),
            carry.kinds + (TokenKind.TEXT,) * len(sentence_ids),
            carry.features,
            carry.pinned,
            carry.pinned_images,
        )


#: The engine class that runs each kind of policy.
_ENGINES = {CachePolicy: StoryEngine, ReencodePolicy: ReencodeStoryEngine}


def engine_for(
    policy: Union[CachePolicy, ReencodePolicy],
    agent,
    tokenizer,
    visual_tokenizer=None,
    *,
    merge_lora: Optional[bool] = None,
) -> StoryEngine:
    """The engine that runs stories with ``policy`` (a state's ``settings.policy``, or the settings a story will
    start with): :class:`StoryEngine` for KV-cache policies, :class:`ReencodeStoryEngine` for the official loop.

    Raises:
        TypeError: ``policy`` is neither a :class:`CachePolicy` nor a :class:`ReencodePolicy`.
    """
    try:
        cls = _ENGINES[type(policy)]
    except KeyError:
        raise TypeError(f"expected a CachePolicy or ReencodePolicy, got {type(policy).__name__}") from None
    return cls(agent, tokenizer, visual_tokenizer, merge_lora=merge_lora)


class PolicyEngines:
    """Stories under any policy over one agent and tokenizer: one engine per policy type, made on first use.

    :meth:`start`, :meth:`step` and :meth:`run` go to the engine that runs the story's policy (:func:`engine_for`:
    :class:`StoryEngine` for the KV-cache policies, :class:`ReencodeStoryEngine` for the official loop), so one object
    runs the stories of every policy side by side (the benchmarks compare them). The engines share the agent, the
    tokenizer, the visual tokenizer and ``merge_lora``: ``None`` (auto) is decided by the first engine made and kept
    for the others, so every engine decodes through the same decoder.

    Args:
        agent: :class:`~seedstory_core.agent.SeedStoryAgent`, as for :class:`StoryEngine`.
        tokenizer: :class:`~seedstory_core.tokenizer.SeedStoryTokenizer` with the 66 image tokens.
        visual_tokenizer: optional visual tokenizer (to start from a picture rather than from features).
        merge_lora: ``StoryEngine(merge_lora=...)`` of every engine (None = auto).

    Raises (from :meth:`engine`, :meth:`start`, :meth:`step`, :meth:`run`):
        TypeError: a policy that is neither a :class:`CachePolicy` nor a :class:`ReencodePolicy`, or a state that is
            not a :class:`StoryState`.
        ValueError: what the engine itself raises (bad text, features, model fingerprint, ...).
    """

    def __init__(self, agent, tokenizer, visual_tokenizer=None, *, merge_lora: Optional[bool] = None):
        self.agent = agent
        self.tokenizer = tokenizer
        self.visual_tokenizer = visual_tokenizer
        self.merge_lora = merge_lora
        self._engines: Dict[type, StoryEngine] = {}

    def engine(self, policy: Union[CachePolicy, ReencodePolicy]) -> StoryEngine:
        """The engine that runs ``policy`` (made by :func:`engine_for` the first time its policy type is asked for).

        Raises:
            TypeError: ``policy`` is neither a :class:`CachePolicy` nor a :class:`ReencodePolicy`.
        """
        key = type(policy)
        if key not in self._engines:
            engine = engine_for(policy, self.agent, self.tokenizer, self.visual_tokenizer, merge_lora=self.merge_lora)
            self.merge_lora = engine.merge_lora  # auto is decided once, for every engine
            self._engines[key] = engine
        return self._engines[key]

    def start(self, text: str, *, settings: Optional[StorySettings] = None, **kwargs) -> StoryState:
        """:meth:`StoryEngine.start` on the engine of ``settings.policy`` (default ``StorySettings()``); ``kwargs``:
        ``image=`` or ``features=``."""
        settings = settings if settings is not None else StorySettings()
        return self.engine(settings.policy).start(text, settings=settings, **kwargs)

    def step(self, state: StoryState, **kwargs) -> StepResult:
        """:meth:`StoryEngine.step` on the engine of the state's policy (same keyword arguments)."""
        return self.engine(self._policy_of(state)).step(state, **kwargs)

    def run(self, state: StoryState, n_steps: int, **kwargs) -> Tuple[StoryState, List[StepResult]]:
        """:meth:`StoryEngine.run` on the engine of the state's policy (same keyword arguments)."""
        return self.engine(self._policy_of(state)).run(state, n_steps, **kwargs)

    @staticmethod
    def _policy_of(state: StoryState) -> Union[CachePolicy, ReencodePolicy]:
        if not isinstance(state, StoryState):
            raise TypeError(
                f"expected a StoryState (from PolicyEngines.start or a previous step), got {type(state).__name__}"
            )
        return state.settings.policy

"""The tiny SEED-Story model: its sizes, its caption tokenizer and a random-weight bundle.

Tests, the benchmarks, the bundled demo model and the tiny training recipe use a small model that keeps the
official structure where the story engine depends on it (64 IMG tokens per image, 64 ViT tokens, a multi-layer
LLaMA with several heads) and is otherwise small enough to train and run on a CPU.

* :func:`tiny_story_corpus` — a deterministic corpus of simple story sentences from built-in word lists.
* :func:`build_tiny_tokenizer` / :func:`default_tiny_tokenizer` — train a small LLaMA-like BPE caption
  tokenizer with the legacy LLaMA-2 chunking properties of :class:`~seedstory_core.tokenizer.SeedStoryTokenizer`
  (image tokens after the base vocabulary, chunk independence).
* :func:`tiny_config` — the tiny sizes (a :class:`~seedstory_core.config.SeedStoryConfig`).
* :func:`random_tiny_bundle` — a seeded random-weight :class:`~seedstory_core.bundle.SeedStoryBundle` of those
  sizes.
"""

from __future__ import annotations

import json
import string
from typing import Iterable, List, Optional

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .agent import SeedStoryAgent
from .bundle import SeedStoryBundle
from .config import (
    AgentConfig,
    DetokenizerConfig,
    DetokenizerResamplerConfig,
    ImageTokenSettings,
    LlamaSettings,
    LoraSettings,
    ResamplerConfig,
    SeedStoryConfig,
    VisualTokenizerConfig,
)
from .detokenizer import SeedStoryDetokenizer
from .tokenizer import BOS_TOKEN, EOS_TOKEN, INST, UNK_TOKEN, SeedStoryTokenizer, added_token, wrap_fast_tokenizer
from .visual_tokenizer import QwenVisualTokenizer

__all__ = [
    "tiny_story_corpus",
    "build_tiny_tokenizer",
    "default_tiny_tokenizer",
    "tiny_config",
    "random_tiny_bundle",
]

_SPIECE_UNDERLINE = "\u2581"
#: Characters every tiny tokenizer knows as single pieces, whatever its corpus (printable ASCII without space).
_BASE_ALPHABET = string.ascii_letters + string.digits + string.punctuation


# ---------------------------------------------------------------------- corpus
_NAMES = ["George", "Peppa", "Jim", "Anna", "Tom", "Lily", "Max", "Zoe", "Sam", "Mia", "Ben", "Rosa"]
_ANIMALS = ["monkey", "pig", "dog", "cat", "rabbit", "bear", "duck", "fox", "owl", "horse"]
_PLACES = [
    "the park",
    "the kitchen",
    "the garden",
    "the beach",
    "the zoo",
    "the forest",
    "school",
    "the city",
    "the farm",
    "the lake",
    "the museum",
    "the playground",
]
_VERBS = [
    "runs to",
    "walks to",
    "looks at",
    "plays in",
    "jumps over",
    "smiles at",
    "waves at",
    "points at",
    "climbs",
    "visits",
    "paints",
    "finds",
]
_OBJECTS = [
    "a red ball",
    "a big box",
    "a yellow hat",
    "two apples",
    "a small boat",
    "the blue kite",
    "a funny book",
    "three balloons",
    "a new bike",
    "the old map",
    "a green umbrella",
    "a shiny key",
]
_ADJ = ["happy", "curious", "excited", "tired", "surprised", "brave", "hungry", "sleepy", "proud", "quiet"]
_TIME = [
    "In the morning",
    "One sunny day",
    "Later",
    "After lunch",
    "At night",
    "Suddenly",
    "Then",
    "Soon",
    "The next day",
    "Meanwhile",
]
_SAYS = [
    '"Look at this!"',
    '"Let\'s go!"',
    '"What is that?"',
    '"I\'m so happy!"',
    '"Can we play?"',
    '"Oh no!"',
    '"That\'s fun!"',
    '"Wow, it\'s big!"',
]


def tiny_story_corpus(num_lines: int = 400) -> List[str]:
    """A deterministic corpus of simple English story sentences, generated from built-in word lists.

    Lines use names, punctuation, apostrophes, quotes, numbers and the ``'[INST]'`` marker (about one line in
    three starts with it, as captions do in SEED-Story prompts, docs/reference.md §5).

    Args:
        num_lines (int): number of lines (>= 1).

    Returns:
        list[str]

    Raises:
        ValueError: if ``num_lines`` < 1.
    """
    if not isinstance(num_lines, int) or num_lines < 1:
        raise ValueError(f"tiny_story_corpus: expected num_lines >= 1, found {num_lines!r}.")
    lines = []
    for i in range(num_lines):
        name = _NAMES[i % len(_NAMES)]
        friend = _NAMES[(i * 5 + 3) % len(_NAMES)]
        animal = _ANIMALS[(i * 3) % len(_ANIMALS)]
        place = _PLACES[(i * 7) % len(_PLACES)]
        verb = _VERBS[(i * 11) % len(_VERBS)]
        obj = _OBJECTS[(i * 13) % len(_OBJECTS)]
        adj = _ADJ[(i * 17) % len(_ADJ)]
        when = _TIME[(i * 19) % len(_TIME)]
        say = _SAYS[(i * 23) % len(_SAYS)]
        kind = i % 6
        if kind == 0:
            line = f"{when}, {name} the {animal} {verb} {place}."
        elif kind == 1:
            line = f"{name} is {adj} because {friend} has {obj}. {say}"
        elif kind == 2:
            line = f"{name}'s friend {friend} {verb} {obj} in {place}, and they laugh."
        elif kind == 3:
            line = f"{when}, {name} and {friend} see {(i * 37) % 100} {animal}s at {place}! {say} says {friend}."
        elif kind == 4:
            line = f"{name} doesn't know where {obj} is, so {name} asks {friend}: {say}"
        else:
            line = f"At {i % 12 + 1} o'clock, the {adj} {animal} {verb} {place}; {name} is {adj} too ({i} steps)."
        if i % 3 == 1:
            line = INST + line
        lines.append(line)
    return lines


# ---------------------------------------------------------------------- caption tokenizer
def build_tiny_tokenizer(
    texts: Iterable[str], vocab_size: int, image_tokens: ImageTokenSettings = ImageTokenSettings()
) -> SeedStoryTokenizer:
    """Train a small LLaMA-style tokenizer with the ``tokenizers`` library and add the image tokens.

    Layout (like LLaMA-2): ``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2, the 256 byte-fallback pieces ``<0x00>`` ..
    ``<0xFF>`` = 3..258, then the characters (printable ASCII + those of ``texts``) and the BPE merges learned
    from ``texts``, then (if the trainer yields
    fewer) deterministic filler pieces ``<unused_NNNNN>`` (never produced by encoding) up to EXACTLY
    ``vocab_size``; then the image tokens at ids ``vocab_size`` .. ``vocab_size + 2 + n - 1`` in the order BOI,
    EOI, IMG_0.. (docs/reference.md §2.1). Normalisation is LLaMA's legacy one (``Prepend('▁')`` +
    ``Replace(' ', '▁')``) with a ``'▁'``-splitting pre-tokenizer, so text after an image tag gets a dummy prefix and
    the chunk-independence
    property holds. Deterministic for the same inputs. Characters never seen in ``texts`` are encoded with byte
    fallback.

    Args:
        texts (Iterable[str]): training lines (image tags inside them are ignored as plain text; avoid them).
        vocab_size (int): base vocabulary size, >= 259 + number of distinct characters (printable ASCII and
            those in ``texts``) + 3; about 360 for ASCII text.
        image_tokens (ImageTokenSettings): the image token strings.

    Returns:
        SeedStoryTokenizer: with ``base_vocab_size == vocab_size``.

    Raises:
        ValueError: if ``texts`` is empty or holds no non-empty str, or ``vocab_size`` is too small.
        TypeError: if an element of ``texts`` is not a str.
    """
    lines = []
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"build_tiny_tokenizer: expected texts to be strings, found {type(t).__name__}.")
        if t:
            lines.append(t)
    if not lines:
        raise ValueError("build_tiny_tokenizer: expected at least one non-empty training text, found none.")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"build_tiny_tokenizer: expected vocab_size to be an int, found {type(vocab_size).__name__}.")

    specials = [UNK_TOKEN, BOS_TOKEN, EOS_TOKEN]
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    corpus_chars = {c for line in lines for c in line.replace(" ", _SPIECE_UNDERLINE)}
    alphabet = sorted(corpus_chars | set(_BASE_ALPHABET) | {_SPIECE_UNDERLINE})
    minimum = len(specials) + len(byte_pieces) + len(alphabet) + 3
    if vocab_size < minimum:
        raise ValueError(
            f"build_tiny_tokenizer: expected vocab_size >= {minimum} (3 special + 256 byte pieces + "
            f"{len(alphabet)} characters (printable ASCII + the corpus) + 3 merges), found {vocab_size}. "
            "Increase vocab_size."
        )

    normalizer = normalizers.Sequence(
        [normalizers.Prepend(_SPIECE_UNDERLINE), normalizers.Replace(" ", _SPIECE_UNDERLINE)]
    )
    pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPIECE_UNDERLINE, prepend_scheme="never", split=True)

    # 1. learn characters + merges (the trainer's vocab holds the 3 specials, the alphabet and the merges).
    trainer_model = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    trainer_model.normalizer = normalizer
    trainer_model.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(byte_pieces),
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    trainer_model.train_from_iterator(lines, trainer=trainer)
    learned = json.loads(trainer_model.to_str())["model"]
    learned_vocab = sorted(learned["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in learned["merges"]]

    # 2. re-index LLaMA-style and pad to exactly vocab_size.
    pieces = specials + byte_pieces
    seen = set(pieces)
    for piece, _ in learned_vocab:
        if piece not in seen:
            pieces.append(piece)
            seen.add(piece)
    if len(pieces) > vocab_size:  # cannot happen with the trainer budget above; guard the contract anyway
        raise ValueError(f"build_tiny_tokenizer: trainer produced {len(pieces)} pieces, more than {vocab_size}.")
    filler = 0
    while len(pieces) < vocab_size:
        piece = f"<unused_{filler:05d}>"
        filler += 1
        if piece not in seen:
            pieces.append(piece)
            seen.add(piece)

    model = models.BPE(
        vocab={p: i for i, p in enumerate(pieces)},
        merges=[tuple(m.split(" ")) for m in merges],
        unk_token=UNK_TOKEN,
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = Tokenizer(model)
    backend.normalizer = normalizer
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.Sequence(
        [decoders.Replace(_SPIECE_UNDERLINE, " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    backend.add_special_tokens([added_token(s, special=True) for s in specials])
    tok = SeedStoryTokenizer(wrap_fast_tokenizer(backend, source="build_tiny_tokenizer"), image_tokens)
    if tok.base_vocab_size != vocab_size:
        raise ValueError(
            f"build_tiny_tokenizer: expected a base vocabulary of {vocab_size}, found {tok.base_vocab_size}."
        )
    return tok


_DEFAULT_TINY_CACHE: dict = {}


def default_tiny_tokenizer(vocab_size: int = 1000) -> SeedStoryTokenizer:
    """:func:`build_tiny_tokenizer` on :func:`tiny_story_corpus` (400 lines), with the default image tokens.

    Deterministic; the result for a given ``vocab_size`` is built once per process and shared (the tokenizer is
    not meant to be mutated).

    Args:
        vocab_size (int): base vocabulary size (default 1000; image tokens get ids vocab_size..vocab_size+65).

    Returns:
        SeedStoryTokenizer

    Raises:
        ValueError: if ``vocab_size`` is too small for the corpus (see :func:`build_tiny_tokenizer`).
    """
    tok = _DEFAULT_TINY_CACHE.get(vocab_size)
    if tok is None:
        tok = build_tiny_tokenizer(tiny_story_corpus(), vocab_size)
        _DEFAULT_TINY_CACHE[vocab_size] = tok
    return tok


# ---------------------------------------------------------------------- model
def tiny_config(base_vocab: int = 1000) -> SeedStoryConfig:
    """Small, chained sizes for tests and the bundled demo model.

    Keeps the official structure that matters for the story engine: 64 IMG tokens per image (so the multimodal
    sink ranges [BOI-4, BOI+8) / [EOI-8, EOI+4) mean the same thing as at full size), 64 ViT tokens, a
    multi-layer LLaMA with several heads. ``base_vocab`` is the text tokenizer's size before the 66 image tokens.
    """
    hidden = 256
    n_img = 64
    return SeedStoryConfig(
        name="tiny",
        visual_tokenizer=VisualTokenizerConfig(
            image_size=112,
            patch_size=14,
            width=128,
            layers=2,
            heads=4,
            mlp_ratio=4.9231,
            n_queries=64,
            output_dim=hidden,
        ),
        agent=AgentConfig(
            llm=LlamaSettings(
                vocab_size=base_vocab + 2 + n_img,
                hidden_size=hidden,
                intermediate_size=688,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=4,
                max_position_embeddings=4096,
            ),
            lora=LoraSettings(),
            input_resampler=ResamplerConfig(grid_size=8, embed_dim=hidden, num_heads=4, kv_dim=hidden),
            output_resampler=ResamplerConfig(grid_size=8, embed_dim=hidden, num_heads=4, kv_dim=hidden),
            image_tokens=ImageTokenSettings(num_img_tokens=n_img),
        ),
        detokenizer=DetokenizerConfig(
            resampler=DetokenizerResamplerConfig(
                dim=128,
                depth=2,
                dim_head=32,
                heads=4,
                num_queries=16,
                embedding_dim=hidden,
                output1_dim=32,
                output2_dim=64,
                ff_mult=4,
            ),
            sdxl_preset="sdxl_tiny",
            default_size=64,
        ),
    ).validate()


def random_tiny_bundle(
    seed: int = 0, *, base_vocab: int = 1000, tokenizer: Optional[SeedStoryTokenizer] = None
) -> SeedStoryBundle:
    """A seeded random-weight tiny model (tests, the demo before a trained model exists, training init).

    Args:
        seed (int): torch seed for the weights; the global RNG state is restored afterwards.
        base_vocab (int): base vocabulary of the default tokenizer (ignored when ``tokenizer`` is given).
        tokenizer (SeedStoryTokenizer | None): the tokenizer to use (e.g. one trained on the training captions);
            its base vocabulary sets the model's vocabulary. Default: :func:`default_tiny_tokenizer` with
            ``base_vocab`` pieces.

    Returns: a :class:`~seedstory_core.bundle.SeedStoryBundle` with the :func:`tiny_config` sizes, every module
    in eval mode (float32, CPU).

    Raises: ValueError if ``base_vocab`` is too small for the tiny corpus (see :func:`build_tiny_tokenizer`).
    """
    if tokenizer is None:
        tokenizer = default_tiny_tokenizer(base_vocab)
    base_vocab = tokenizer.vocab_size - 2 - tokenizer.num_img_tokens
    config = tiny_config(base_vocab)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        vit = QwenVisualTokenizer(config.visual_tokenizer).eval()
        agent = SeedStoryAgent.build(config.agent).eval()
        detok = SeedStoryDetokenizer.build(config.detokenizer).eval()
    finally:
        torch.random.set_rng_state(state)
    return SeedStoryBundle(config, tokenizer, vit, agent, detok)

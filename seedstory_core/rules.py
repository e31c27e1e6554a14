"""The model's rules for a story run, checked once before any model work.

Every front end (the ComfyUI nodes, ``python -m seedstory_core.tell``, the evaluation) calls :func:`check_story_run`
(or one of its parts) before it starts a story, so a text the model cannot take, a visualization with too few
captions, or a de-tokenizer of another model is refused before the first token is decoded:

* **sentence length** (:func:`max_text_tokens`, :func:`check_text_length`): one frame's sentence may use at most an
  eighth of the position range the model was built for, minus the image's tokens (docs/reference.md §2.1, §5);
* **a bound in characters** (:func:`check_text_chars`, :data:`MAX_TEXT_CHARS`): the token limit needs the agent's
  tokenizer, which a front end may not have yet (ComfyUI validates a prompt before any model is loaded); a text
  longer than the shipped models' limit times the longest token piece is surely over, and is refused without it;
* **one caption per step in visualization mode** (:func:`story_texts`): the agent draws given sentences, so
  there must be one for every step (the StoryGPT-V task, docs/reference.md §3.2);
* **clean text** (:func:`check_clean_text`): no lone surrogate (a half of a UTF-16 pair, which no tokenizer or file
  can encode) and no control character but newline and tab (they are invisible, and the tokenizer was never trained
  on them);
* **one feature width** (:func:`check_feature_width`): the agent regresses visual-tokenizer features of one width
  and the de-tokenizer must read that width (docs/reference.md §0, §4.1).

Errors are :class:`StoryRuleError` (a ``ValueError``) whose message says what was expected, what was found and
what to do, naming the input as the caller calls it (``'opening_text'``, ``--captions``, ...); callers prefix it
with where it happened (a node's name) and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Optional, Sequence

from .config import AgentConfig

__all__ = [
    "STORY_MODES",
    "StoryRuleError",
    "StoryRun",
    "check_clean_text",
    "SHIPPED_TEXT_TOKENS",
    "LONGEST_PIECE_CHARS",
    "MAX_TEXT_CHARS",
    "check_text_chars",
    "max_text_tokens",
    "check_text_length",
    "check_mode",
    "story_texts",
    "check_feature_width",
    "check_story_run",
]


#: What a story step does: ``generation`` (the agent writes the sentence, then draws it) or ``visualization`` (the
#: agent draws a sentence it is given, the StoryGPT-V task, docs/reference.md §3.2).
STORY_MODES = ("generation", "visualization")


class StoryRuleError(ValueError):
    """A story input breaks one of the model's rules (message: expected / found / what to do)."""


#: What :func:`check_clean_text` refuses: lone surrogates and control characters (category Cc) but tab, newline
#: and carriage return (a Windows line end).
_UNCLEAN = re.compile("[\ud800-\udfff\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _where(text: str, index: int) -> str:
    if "\n" not in text:
        return f"character {index + 1}"
    line = text.count("\n", 0, index) + 1
    column = index - (text.rfind("\n", 0, index) + 1) + 1
    return f"character {index + 1} (line {line}, column {column})"


def check_clean_text(text: str, name: str) -> str:
    """Refuse a text with a lone surrogate or a control character; returns ``text`` unchanged otherwise.

    A lone surrogate (U+D800..U+DFFF outside a pair, e.g. ``"\\ud800"`` sent in JSON) cannot be encoded as UTF-8,
    so the tokenizer and every file writer fail on it; control characters (Unicode category ``Cc``: U+0000..U+001F,
    U+007F..U+009F) other than tab (U+0009), newline (U+000A) and carriage return (U+000D, a Windows line end) are
    invisible and unknown to the tokenizer. One regular-expression scan: linear in the text's length.

    Args:
        text: the story text (opening text, a step's text, captions; several lines allowed).
        name: the input's name as the user knows it, quoted in the message (e.g. ``"opening_text"``).

    Returns:
        ``text`` unchanged.

    Raises:
        StoryRuleError: naming the input, the character as ``U+XXXX`` and where it is (1-based character, line and
            column, for a text of several lines), and what to do.
    """
    text = str(text)
    found = _UNCLEAN.search(text)
    if found is None:
        return text
    index, code = found.start(), ord(found.group())
    if 0xD800 <= code <= 0xDFFF:
        raise StoryRuleError(
            f"'{name}' has a lone surrogate U+{code:04X} at {_where(text, index)}: half of a UTF-16 pair, which is "
            "not a character and cannot be encoded as UTF-8. Remove it or replace it with the character meant (a "
            "broken copy-paste or a JSON '\\ud800' escape without its pair)."
        )
    raise StoryRuleError(
        f"'{name}' has the control character U+{code:04X} at {_where(text, index)}; a story text may hold "
        "printable characters, newlines and tabs only. Remove it."
    )


#: :func:`max_text_tokens` of the models the pack ships: the tiny model and SEED-Story-George (4096 positions, 64
#: image tokens: 4096 // 8 - 66). tests/core/test_rules.py keeps it equal to both configs' limit.
SHIPPED_TEXT_TOKENS = 446
#: The longest text a single token of the shipped tokenizers covers, in characters: 16 for LLaMA-2 (e.g.
#: '▁representations', the word-start mark counting for the space), 14 for the tiny tokenizer. Every character of a
#: text belongs to at least one token, so a text of ``c`` characters has at least ``c / 16`` tokens.
LONGEST_PIECE_CHARS = 16
#: A text longer than this (7,136 characters) is surely over :data:`SHIPPED_TEXT_TOKENS`, whatever its words:
#: refused by :func:`check_text_chars` before any tokenizer is at hand. Models of your own with a longer context
#: (``max_position_embeddings`` > 4096) are held to it too.
MAX_TEXT_CHARS = SHIPPED_TEXT_TOKENS * LONGEST_PIECE_CHARS


def check_text_chars(text: str, name: str) -> str:
    """Refuse a text of more than :data:`MAX_TEXT_CHARS` characters (stripped); returns ``text`` unchanged.

    The part of the sentence-length rule that needs no tokenizer: ``MAX_TEXT_CHARS`` characters are more than
    :data:`SHIPPED_TEXT_TOKENS` tokens for any text, because no token covers more than :data:`LONGEST_PIECE_CHARS`
    characters. Cheap (``len``), so it runs first, before the text is scanned or tokenized. The exact limit in
    tokens is :func:`check_text_length`.

    Args:
        text: the sentence (one caption line, an opening text, a step's text).
        name: the input's name as the user knows it, quoted in the message.

    Raises:
        StoryRuleError: the text is longer (the message gives its length, the bound and what to do).
    """
    text = str(text)
    n = len(text.strip())
    if n > MAX_TEXT_CHARS:
        raise StoryRuleError(
            f"'{name}' is {n:,} characters long, surely more than the {SHIPPED_TEXT_TOKENS} tokens a SEED-Story "
            f"sentence may have (no token covers more than {LONGEST_PIECE_CHARS} characters, so anything over "
            f"{MAX_TEXT_CHARS:,} characters is over). Shorten it to about 1,500 characters; a story is told one "
            "sentence per frame, so put the rest in the following steps (captions, or the text of Story Step)."
        )
    return text


def max_text_tokens(config: AgentConfig) -> int:
    """The longest sentence (opening text, a caption, a step's text) a story takes, in tokens.

    Rule: ``max_position_embeddings // 8 - (num_img_tokens + 2)``. The agent's cache holds a window of 8 frames by
    default (Story Settings), each one sentence plus the image's ``num_img_tokens + 2`` tokens (BOI, IMG x n, EOI),
    so one frame may use an eighth of the position range the model was built for. Both the bundled tiny model and
    SEED-Story-George have ``max_position_embeddings = 4096`` and 64 image tokens: 446 tokens (the official
    training stories average ~60 text tokens per frame: max_length 1280 for 10 frames of 66 image tokens + text,
    docs/reference.md §5).

    Args:
        config: the agent's :class:`~seedstory_core.config.AgentConfig` (``llm.max_position_embeddings``,
            ``image_tokens.num_img_tokens``).

    Returns:
        The limit in tokens of the agent's tokenizer (>= 16 for any config).
    """
    positions = int(config.llm.max_position_embeddings)
    return max(16, positions // 8 - (int(config.image_tokens.num_img_tokens) + 2))


def check_text_length(tokenizer, config: AgentConfig, text: str, *, name: str) -> str:
    """Refuse a sentence longer than :func:`max_text_tokens`; returns ``text`` unchanged.

    Counted with the agent's own tokenizer on the stripped text (what the story engine feeds the model); a text of
    more than ``limit *`` :data:`LONGEST_PIECE_CHARS` characters is refused without tokenizing it. An empty text
    passes (whether it may be empty is the caller's rule).

    Args:
        tokenizer: the agent's :class:`~seedstory_core.tokenizer.SeedStoryTokenizer` (``encode(str) -> ids``).
        config: the agent's :class:`~seedstory_core.config.AgentConfig`.
        text: the sentence.
        name: the input's name as the user knows it, quoted in the message (e.g. ``"opening_text"``).

    Raises:
        StoryRuleError: the text is over the limit (the message gives both lengths and a length in characters to
            aim for).
    """
    text = str(text)
    if not text.strip():
        return text
    limit = max_text_tokens(config)
    if len(text.strip()) > limit * LONGEST_PIECE_CHARS:  # surely over: never hand a huge text to the tokenizer
        raise StoryRuleError(
            f"'{name}' is {len(text.strip()):,} characters long, at least "
            f"{-(-len(text.strip()) // LONGEST_PIECE_CHARS):,} tokens, but this model takes at most {limit} tokens "
            f"per sentence. Shorten it to about {limit * 3:,} characters; a story is told one sentence per frame, so "
            "put the rest in the following steps (captions, or the text of Story Step)."
        )
    n = len(tokenizer.encode(text.strip()))
    if n > limit:
        per_token = len(text.strip()) / n
        raise StoryRuleError(
            f"'{name}' is {n} tokens long ({len(text.strip())} characters), but this model takes at most "
            f"{limit} tokens per sentence (max_position_embeddings {config.llm.max_position_embeddings} / 8 - "
            f"{int(config.image_tokens.num_img_tokens) + 2} image tokens). Shorten it to about "
            f"{int(limit * per_token)} characters; a story is told one sentence per frame, so put the rest in the "
            "following steps (captions, or the text of Story Step)."
        )
    return text


def check_mode(mode: str) -> str:
    """``mode`` must be one of :data:`STORY_MODES`; returns it.

    Raises:
        StoryRuleError: an unknown mode.
    """
    if mode not in STORY_MODES:
        raise StoryRuleError(f"mode must be one of {STORY_MODES}, found {mode!r}.")
    return mode


def story_texts(
    captions: Optional[Sequence[Optional[str]]],
    steps: int,
    mode: str,
    *,
    captions_name: str = "captions",
    steps_name: str = "story_steps",
) -> List[str]:
    """The per-step texts of a story run: the captions stripped, one per step.

    In ``generation`` mode a caption is the optional beginning of that step's sentence (an empty one leaves it
    free), so every line is kept in place. In ``visualization`` mode the captions are the sentences to draw: empty
    lines are dropped and at least ``steps`` must remain.

    Args:
        captions: the user's lines (None = none).
        steps: how many frames the run adds (>= 1).
        mode: one of :data:`STORY_MODES`.
        captions_name, steps_name: the inputs' names as the user knows them, quoted in messages.

    Returns:
        list[str]: stripped texts, ``texts[i]`` for step ``i + 1`` (may be shorter than ``steps`` in generation).

    Raises:
        StoryRuleError: ``steps`` < 1, an unknown mode, or too few captions in visualization mode.
    """
    if int(steps) < 1:
        raise StoryRuleError(f"{steps_name} must be >= 1, found {steps}.")
    check_mode(mode)
    lines = [str(c or "").strip() for c in (captions or [])]
    if mode == "visualization":
        lines = [line for line in lines if line]
        if len(lines) < int(steps):
            raise StoryRuleError(
                f"visualization mode needs one caption per step: {steps_name}={steps} needs {steps} non-empty lines "
                f"in '{captions_name}', but it has {len(lines)} non-empty line(s). Add lines or lower {steps_name}."
            )
    return lines


def check_feature_width(agent_width: int, detokenizer_width: int) -> None:
    """The de-tokenizer must read the width of the features the agent regresses (docs/reference.md §4.1).

    Args:
        agent_width: the agent's feature width D (``config.input_resampler.kv_dim``).
        detokenizer_width: the de-tokenizer resampler's input width (``config.resampler.embedding_dim``).

    Raises:
        StoryRuleError: the widths differ (the models come from two different SEED-Story models).
    """
    if int(agent_width) != int(detokenizer_width):
        raise StoryRuleError(
            f"the de-tokenizer takes features of width {detokenizer_width} but the agent makes {agent_width}; "
            "load both from the same model."
        )


@dataclass(frozen=True)
class StoryRun:
    """A story run that passed :func:`check_story_run`: the opening text as given and the per-step texts."""

    opening_text: str
    texts: List[str]


def check_story_run(
    tokenizer,
    config: AgentConfig,
    *,
    opening_text: str,
    steps: int,
    mode: str = "generation",
    captions: Optional[Sequence[Optional[str]]] = None,
    detokenizer_width: Optional[int] = None,
    opening_name: str = "opening_text",
    captions_name: str = "captions",
    steps_name: str = "story_steps",
) -> StoryRun:
    """Every rule of a whole story run, before any model work: the opening text and each caption clean
    (:func:`check_clean_text`) and not too long, the caption count in visualization mode, and (when a de-tokenizer
    renders the frames) the feature width.

    Args:
        tokenizer, config: the agent's tokenizer and :class:`~seedstory_core.config.AgentConfig`.
        opening_text: the sentence of the start picture.
        steps: frames to add (>= 1).
        mode: ``generation`` or ``visualization`` (:data:`STORY_MODES`).
        captions: one line per step (see :func:`story_texts`), or None.
        detokenizer_width: the de-tokenizer's feature width, or None when nothing is rendered.
        opening_name, captions_name, steps_name: the inputs' names as the user knows them.

    Returns:
        :class:`StoryRun` with the per-step texts to pass to :meth:`seedstory_core.story.StoryEngine.run`.

    Raises:
        StoryRuleError: the first rule broken (see the functions above).
    """
    check_text_chars(opening_text, opening_name)
    check_clean_text(opening_text, opening_name)
    check_text_length(tokenizer, config, opening_text, name=opening_name)
    lines = [str(c or "").strip() for c in (captions or [])]
    for k, line in enumerate(lines):
        check_text_chars(line, f"{captions_name} (line {k + 1})")
        check_clean_text(line, f"{captions_name} (line {k + 1})")
        check_text_length(tokenizer, config, line, name=f"{captions_name} (line {k + 1})")
    texts = story_texts(lines, steps, mode, captions_name=captions_name, steps_name=steps_name)
    if detokenizer_width is not None:
        check_feature_width(int(config.input_resampler.kv_dim), detokenizer_width)
    return StoryRun(opening_text, texts)

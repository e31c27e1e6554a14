"""The SEED-Story text tokenizer: LLaMA-2 (legacy sentencepiece behaviour) + 66 image tokens
(docs/reference.md §2.1, §3.1, §5).

SEED-Story uses the slow ``LlamaTokenizer`` of transformers 4.34 (``legacy=True``) with 2 + 64 added tokens:
BOI ``<img>``, EOI ``</img>`` and ``<img_00000>`` .. ``<img_00063>``. The official code never hard-codes their ids
(it looks them up with ``encode(tok, add_special_tokens=False)[0]``); with the LLaMA-2 base vocabulary of 32000
they are 32000 (BOI), 32001 (EOI), 32002..32065 (IMG), which this module reproduces by adding them in that order.

Prompts are plain string concatenations without spaces (docs/reference.md §3.1, §5)::

    caption0<img><img_00000>...<img_00063></img>[INST]caption1<img>...</img>[INST]caption2...

and ``ids = [BOS] + encode(prompt, add_special_tokens=False)``. In legacy mode the text is split on the added
tokens first and every text chunk is then encoded by sentencepiece on its own, which prepends its dummy-prefix
``'▁'`` to each chunk. Consequences this module relies on and the tests check:

* the 66 image tokens always come out as exactly ``[boi, img_0, ..., img_63, eoi]``;
* ``'[INST]'`` right after ``</img>`` tokenizes like the start of a text (LLaMA-2: ``'▁['``, ``'INST'``, ``']'``
  = ``[518, 25580, 29962]``), not as a continuation;
* **chunk independence**: ``encode_prompt(a + IMG + b) == encode(a) + image_run + encode(b)``, so a story can
  be tokenized incrementally, chunk by chunk.

The fast (``tokenizers``) backend reproduces this when the image tokens are registered with
``normalized=False`` (the normaliser, which prepends ``'▁'``, then runs on each chunk separately). The slow
sentencepiece backend of transformers (``legacy=True``) does it natively.

:func:`seedstory_core.tiny.build_tiny_tokenizer` trains a small LLaMA-like tokenizer with the same properties, for
tests and tiny models, from the public building blocks here: :data:`UNK_TOKEN` / :data:`BOS_TOKEN` /
:data:`EOS_TOKEN`, :func:`added_token` and :func:`wrap_fast_tokenizer`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple, Union

from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast

from .config import ImageTokenSettings
from .tokens import ImageTokens

try:  # the slow sentencepiece backend is optional: only a folder holding tokenizer.model alone needs it
    import sentencepiece  # noqa: F401
    from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

    _SENTENCEPIECE_IMPORT_ERROR = None
except ImportError as _exc:
    SentencePieceBackend = None
    _SENTENCEPIECE_IMPORT_ERROR = _exc

__all__ = [
    "SeedStoryTokenizer",
    "TokenizerError",
    "INST",
    "CLEAN_TEXT_PATTERN",
    "UNK_TOKEN",
    "BOS_TOKEN",
    "EOS_TOKEN",
    "added_token",
    "wrap_fast_tokenizer",
]

#: The instruction marker put before every caption but the first (docs/reference.md §3.1, §5).
INST = "[INST]"
#: The official text-cleaning regex (docs/reference.md §3.1): every ``<...>`` tag and the whitespace around it
#: becomes one space.
CLEAN_TEXT_PATTERN = re.compile(r"\s*<[^>]*>\s*")

#: LLaMA's unknown / begin / end of sequence tokens (ids 0, 1, 2 in LLaMA-2, docs/reference.md §2.1).
UNK_TOKEN, BOS_TOKEN, EOS_TOKEN = "<unk>", "<s>", "</s>"

PathLike = Union[str, Path]


class TokenizerError(ValueError):
    """A tokenizer folder or file is unusable for SEED-Story (missing files, bad image tokens, wrong behaviour)."""


def _image_token_strings(settings: ImageTokenSettings) -> List[str]:
    if not isinstance(settings, ImageTokenSettings):
        raise TypeError(f"expected image_tokens to be an ImageTokenSettings, found {type(settings).__name__}.")
    if settings.num_img_tokens < 1:
        raise ValueError(f"expected ImageTokenSettings.num_img_tokens >= 1, found {settings.num_img_tokens}.")
    strings = [settings.boi, settings.eoi, *settings.img_strings()]
    if len(set(strings)) != len(strings) or any(not s for s in strings):
        raise ValueError(f"expected {len(strings)} distinct non-empty image token strings, found {strings[:4]}...")
    return strings


def added_token(content: str, special: bool = False) -> AddedToken:
    """A ``tokenizers.AddedToken`` registered the legacy LLaMA way (docs/reference.md §2.1, §5).

    ``normalized=False``: the text is split on the token BEFORE normalisation, so every text chunk gets its own
    dummy-prefix ``'▁'`` exactly like the legacy slow ``LlamaTokenizer`` (module docstring); no stripping, not
    single-word.

    Args:
        content (str): the token string (e.g. ``'<img>'`` or ``'<s>'``).
        special (bool): register it as a special token (``<unk>``, ``<s>``, ``</s>``); image tokens are not.

    Returns:
        tokenizers.AddedToken
    """
    return AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)


class SeedStoryTokenizer:
    """LLaMA tokenizer + SEED-Story image tokens, with the official prompt conventions
    (docs/reference.md §2.1, §3.1, §5).

    Wraps a transformers tokenizer: a fast ``PreTrainedTokenizerFast`` (from ``tokenizer.json``) or the slow
    sentencepiece backend (from ``tokenizer.model``, ``legacy=True``). Build it with :meth:`from_folder`,
    :meth:`from_tokenizer_json`, :func:`build_tiny_tokenizer` or :func:`default_tiny_tokenizer`; the constructor
    takes an already-prepared transformers tokenizer.

    Args:
        hf_tokenizer: a transformers tokenizer (``PreTrainedTokenizerFast`` / ``TokenizersBackend`` or
            ``SentencePieceBackend``) with BOS ``<s>`` and EOS ``</s>``.
        image_tokens (ImageTokenSettings): the image token strings. Missing ones are added (in the order BOI,
            EOI, IMG_0..IMG_{n-1}); present ones are read.

    Raises:
        TokenizerError: if only some image tokens are present, if an image token does not encode to exactly one
            id, or if the tokenizer does not split text on the image tokens the legacy LLaMA way.
        TypeError: if ``image_tokens`` is not an :class:`ImageTokenSettings`.
    """

    def __init__(self, hf_tokenizer, image_tokens: ImageTokenSettings = ImageTokenSettings()):
        self._tok = hf_tokenizer
        self._settings = image_tokens
        strings = _image_token_strings(image_tokens)
        self._ensure_image_tokens(strings)
        ids = self._verify_single_tokens(strings)
        self._image_ids = ImageTokens(boi=ids[0], eoi=ids[1], img=tuple(ids[2:]))
        tag_ids = set(self._image_ids.all_ids) | set(int(i) for i in self._tok.added_tokens_decoder)
        tag_ids |= {int(i) for i in self._tok.all_special_ids if i is not None}
        self._tag_ids = frozenset(tag_ids)
        self._image_strings = strings
        self._image_run_string = image_tokens.boi + "".join(image_tokens.img_strings()) + image_tokens.eoi
        self._verify_chunking()
        self._inst_ids = tuple(self.encode(INST))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_folder(
        cls, path: PathLike, image_tokens: ImageTokenSettings = ImageTokenSettings()
    ) -> "SeedStoryTokenizer":
        """Load a LLaMA tokenizer folder (e.g. the released ``cvlm_llama2_tokenizer`` or a base LLaMA-2 one).

        ``tokenizer.json`` is preferred (fast backend); otherwise ``tokenizer.model`` is loaded with the slow
        sentencepiece backend in legacy mode (needs the ``sentencepiece`` package), and the tokens listed in an
        ``added_tokens.json`` are re-added in id order. Image tokens absent from the folder are added after the
        base vocabulary in the order BOI, EOI, IMG_0..IMG_{n-1} (docs/reference.md §2.1); present ones are read and
        verified.

        Args:
            path (str | Path): the folder.
            image_tokens (ImageTokenSettings): the image token strings (defaults: docs/reference.md §2.1).

        Returns:
            SeedStoryTokenizer

        Raises:
            FileNotFoundError: if ``path`` is not a folder or holds neither ``tokenizer.json`` nor
                ``tokenizer.model``.
            ImportError: if only ``tokenizer.model`` exists and ``sentencepiece`` is not installed.
            TokenizerError: see the class docstring; also for an unreadable ``added_tokens.json``.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(
                f"expected a tokenizer folder, found no folder at {folder}. For the LLaMA-2 tokenizer run "
                "scripts/fetch_llama2_tokenizer.sh (writes .cache/llama2_tokenizer)."
            )
        json_file = folder / "tokenizer.json"
        if json_file.is_file():
            return cls.from_tokenizer_json(json_file, image_tokens)
        model_file = folder / "tokenizer.model"
        if model_file.is_file():
            return cls(_load_sentencepiece_folder(folder), image_tokens)
        raise FileNotFoundError(
            f"expected tokenizer.json or tokenizer.model in {folder}, "
            f"found {sorted(p.name for p in folder.iterdir())}. "
            "Point to a LLaMA tokenizer folder (for LLaMA-2 run scripts/fetch_llama2_tokenizer.sh)."
        )

    @classmethod
    def from_tokenizer_json(
        cls, path: PathLike, image_tokens: ImageTokenSettings = ImageTokenSettings()
    ) -> "SeedStoryTokenizer":
        """Load a HuggingFace ``tokenizer.json`` (fast backend) of a LLaMA-style tokenizer.

        Args:
            path (str | Path): the ``tokenizer.json`` file.
            image_tokens (ImageTokenSettings): the image token strings (defaults: docs/reference.md §2.1).

        Returns:
            SeedStoryTokenizer

        Raises:
            FileNotFoundError: if the file does not exist.
            TokenizerError: if the file cannot be parsed, lacks ``<s>``/``</s>``, or see the class docstring.
        """
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"expected a tokenizer.json file, found nothing at {file}. For the LLaMA-2 tokenizer run "
                "scripts/fetch_llama2_tokenizer.sh."
            )
        try:
            backend = Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(
                f"could not parse {file} as a HuggingFace tokenizer.json ({exc}). Re-create it, e.g. with "
                "scripts/fetch_llama2_tokenizer.sh."
            ) from exc
        return cls(wrap_fast_tokenizer(backend, source=str(file)), image_tokens)

    def save(self, folder: PathLike) -> Path:
        """Write the tokenizer (with its image tokens) to ``folder`` so :meth:`from_folder` re-reads the same ids.

        Writes the transformers files (``tokenizer.json`` + ``tokenizer_config.json`` for the fast backend,
        ``tokenizer.model`` + ``added_tokens.json`` for the slow one) and ``seedstory_tokenizer.json`` (the image
        token strings and ids, informational).

        Args:
            folder (str | Path): created if missing.

        Returns:
            Path: the folder.
        """
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self._tok.save_pretrained(str(out))
        if _is_sentencepiece(self._tok):
            added = {s: i for s, i in zip(self._image_strings, self._image_ids.all_ids)}
            (out / "added_tokens.json").write_text(json.dumps(added, indent=2), encoding="utf-8")
        info = {
            "image_tokens": self._settings.to_dict(),
            "boi_id": self._image_ids.boi,
            "eoi_id": self._image_ids.eoi,
            "img_ids": list(self._image_ids.img),
            "base_vocab_size": self.base_vocab_size,
            "vocab_size": self.vocab_size,
        }
        (out / "seedstory_tokenizer.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
        return out

    # ------------------------------------------------------------------ properties

    @property
    def hf_tokenizer(self):
        """The wrapped transformers tokenizer (for ``resize_token_embeddings`` etc.)."""
        return self._tok

    @property
    def image_tokens(self) -> ImageTokenSettings:
        """The image token strings (docs/reference.md §2.1)."""
        return self._settings

    @property
    def bos_id(self) -> int:
        """BOS id (1 for LLaMA, docs/reference.md §2.1)."""
        return int(self._tok.bos_token_id)

    @property
    def eos_id(self) -> int:
        """EOS id (2 for LLaMA, docs/reference.md §2.1)."""
        return int(self._tok.eos_token_id)

    @property
    def pad_id(self) -> int:
        """The tokenizer's pad id if it has one, else ``<unk>`` = 0 (docs/reference.md §2.1: value unknown,
        probably 0)."""
        pad = self._tok.pad_token_id
        if pad is not None:
            return int(pad)
        unk = self._tok.unk_token_id
        return int(unk) if unk is not None else 0

    @property
    def unk_id(self) -> int:
        """``<unk>`` id (0 for LLaMA)."""
        unk = self._tok.unk_token_id
        return int(unk) if unk is not None else 0

    @property
    def vocab_size(self) -> int:
        """Total vocabulary size including the added tokens (32066 for SEED-Story, docs/reference.md §2.1)."""
        return len(self._tok)

    @property
    def base_vocab_size(self) -> int:
        """Vocabulary size without added tokens (32000 for LLaMA-2)."""
        return int(self._tok.vocab_size)

    @property
    def image_ids(self) -> ImageTokens:
        """Ids of BOI, EOI and the IMG tokens."""
        return self._image_ids

    @property
    def inst_ids(self) -> Tuple[int, ...]:
        """Ids of ``'[INST]'`` at the start of a chunk, e.g. right after ``</img>`` (LLaMA-2: 518, 25580, 29962)."""
        return self._inst_ids

    @property
    def num_img_tokens(self) -> int:
        """IMG tokens per image (64, docs/reference.md §2.1)."""
        return self._image_ids.num_img_tokens

    # ------------------------------------------------------------------ encoding

    def image_token_string(self) -> str:
        """The 66-token image string ``'<img><img_00000>...<img_00063></img>'`` (no spaces, docs/reference.md §3.1)."""
        return self._image_run_string

    @staticmethod
    def instruction(text: str) -> str:
        """``'[INST]' + text``: how every caption after the first is written (docs/reference.md §5)."""
        if not isinstance(text, str):
            raise TypeError(f"instruction: expected text to be a str, found {type(text).__name__}.")
        return INST + text

    def encode(self, text: str) -> List[int]:
        """Ids of one text chunk as it tokenizes right after an image tag inside an official prompt (no BOS).

        The chunk gets LLaMA's dummy-prefix ``'▁'`` (legacy behaviour), so ``encode('[INST]a')`` starts with
        :attr:`inst_ids`. By chunk independence, ``encode_prompt(x + image_token_string() + y) ==
        encode(x) + image_ids.forced_sequence + encode(y)``.

        Args:
            text (str): a non-empty text without image tags.

        Returns:
            list[int]

        Raises:
            TypeError: if ``text`` is not a str.
            ValueError: if ``text`` is empty or contains an image tag (use :meth:`encode_prompt`).
        """
        self._check_text(text, "encode")
        found = [s for s in (self._settings.boi, self._settings.eoi) if s in text]
        if found:
            raise ValueError(
                f"encode: expected a text chunk without image tags, found {found[0]!r} in {text[:60]!r}. "
                "Use encode_prompt() for whole prompt strings."
            )
        return self._raw_encode(text)

    def encode_prompt(self, prompt: str) -> List[int]:
        """Ids of a whole official prompt string, without BOS: ``encode(prompt, add_special_tokens=False)``.

        The model input is ``[bos_id] + encode_prompt(prompt)`` (docs/reference.md §3.1).

        Args:
            prompt (str): e.g. ``cap0 + image_token_string() + '[INST]' + cap1 + image_token_string()``.

        Returns:
            list[int]

        Raises:
            TypeError: if ``prompt`` is not a str.
            ValueError: if ``prompt`` is empty.
        """
        self._check_text(prompt, "encode_prompt")
        return self._raw_encode(prompt)

    # ------------------------------------------------------------------ decoding / text

    def decode(self, ids: Iterable[int], *, keep_image_tags: bool = False) -> str:
        """Decode ids to text.

        Like the legacy slow tokenizer, the ids are split at the added/special tokens (image tokens, ``<s>``,
        ``</s>``, ``<unk>``) and each text chunk is decoded on its own, dropping the one dummy-prefix space its
        encoding added. The pieces are joined WITHOUT spaces, so ``decode(encode_prompt(p), keep_image_tags=True)
        == p`` for any prompt built the official way (the official 4.34 decode put a space between special tokens;
        after :meth:`clean_text` both give the same text). With ``keep_image_tags=False`` (default) the official
        cleaning :meth:`clean_text` is applied: image tags and ``<s>``/``</s>`` are dropped, ``'[INST]'`` is kept
        (docs/reference.md §3.1).

        Args:
            ids (Iterable[int]): token ids (a list, tuple or 1-D tensor).
            keep_image_tags (bool): see above.

        Returns:
            str

        Raises:
            TypeError: if an id is not an integer.
            ValueError: if an id is outside ``[0, vocab_size)`` or ``ids`` is not 1-D.
        """
        id_list = self._check_ids(ids)
        parts: List[str] = []
        chunk: List[int] = []
        for i in id_list:
            if i in self._tag_ids:
                if chunk:
                    parts.append(self._decode_chunk(chunk))
                    chunk = []
                parts.append(self._tok.convert_ids_to_tokens(i))
            else:
                chunk.append(i)
        if chunk:
            parts.append(self._decode_chunk(chunk))
        text = "".join(parts)
        return text if keep_image_tags else self.clean_text(text)

    def tokens(self, ids: Iterable[int]) -> List[str]:
        """The piece strings of ``ids`` (e.g. ``['▁[', 'INST', ']']``), for inspection and error messages."""
        return list(self._tok.convert_ids_to_tokens(self._check_ids(ids)))

    @staticmethod
    def clean_text(text: str) -> str:
        """The official cleaning (docs/reference.md §3.1): ``re.sub(r'\\s*<[^>]*>\\s*', ' ', text).strip()``.

        Removes image tags and ``</s>`` (any ``<...>``), NOT ``'[INST]'``.

        Raises:
            TypeError: if ``text`` is not a str.
        """
        if not isinstance(text, str):
            raise TypeError(f"clean_text: expected a str, found {type(text).__name__}.")
        return CLEAN_TEXT_PATTERN.sub(" ", text).strip()

    @staticmethod
    def strip_inst(text: str) -> str:
        """Remove every ``'[INST]'`` marker and surrounding whitespace at the ends (what the eval scripts do later).

        Raises:
            TypeError: if ``text`` is not a str.
        """
        if not isinstance(text, str):
            raise TypeError(f"strip_inst: expected a str, found {type(text).__name__}.")
        return text.replace(INST, "").strip()

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"SeedStoryTokenizer(backend={type(self._tok).__name__}, vocab_size={self.vocab_size}, "
            f"boi={self._image_ids.boi}, eoi={self._image_ids.eoi}, img={self._image_ids.img[0]}.."
            f"{self._image_ids.img[-1]}, inst_ids={list(self._inst_ids)})"
        )

    # ------------------------------------------------------------------ internals

    def _decode_chunk(self, ids: List[int]) -> str:
        if _is_sentencepiece(self._tok):
            return self._tok.sp_model.decode(ids)  # removes the dummy prefix, resolves byte pieces
        return self._tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def _raw_encode(self, text: str) -> List[int]:
        return list(self._tok.encode(text, add_special_tokens=False))

    @staticmethod
    def _check_text(text, where: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"{where}: expected a str, found {type(text).__name__}.")
        if not text:
            raise ValueError(f"{where}: expected a non-empty string, found ''. Skip empty chunks before encoding.")

    def _check_ids(self, ids) -> List[int]:
        if hasattr(ids, "tolist") and hasattr(ids, "ndim"):
            if ids.ndim != 1:
                raise ValueError(f"expected a 1-D sequence of token ids, found shape {tuple(ids.shape)}.")
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)):
            raise TypeError("expected a sequence of token ids, found a string. Use encode() to get ids.")
        out = []
        n = self.vocab_size
        for i in ids:
            if isinstance(i, bool) or not hasattr(i, "__index__"):
                raise TypeError(f"expected integer token ids, found {i!r} ({type(i).__name__}).")
            i = int(i)
            if not 0 <= i < n:
                raise ValueError(f"expected token ids in [0, {n}), found {i}. Was it produced by another tokenizer?")
            out.append(i)
        return out

    def _ensure_image_tokens(self, strings: Sequence[str]) -> None:
        vocab = self._tok.get_vocab()
        present = [s for s in strings if s in vocab]
        if len(present) == len(strings):
            return
        if present:
            missing = [s for s in strings if s not in vocab]
            raise TokenizerError(
                f"expected either all {len(strings)} image tokens or none in the tokenizer, found {len(present)} "
                f"(e.g. {present[:3]}) and missing {len(missing)} (e.g. {missing[:3]}). Start from the base LLaMA "
                "tokenizer folder without image tokens, or from a complete SEED-Story tokenizer folder."
            )
        start = len(self._tok)
        if _is_sentencepiece(self._tok):
            tokens = [AddedToken(s, lstrip=False, rstrip=False, normalized=False, special=False) for s in strings]
        else:
            tokens = [added_token(s) for s in strings]
        added = self._tok.add_tokens(tokens)
        if added != len(strings) or len(self._tok) != start + len(strings):
            raise TokenizerError(
                f"expected to add {len(strings)} image tokens at ids {start}..{start + len(strings) - 1}, but the "
                f"tokenizer added {added} (size {start} -> {len(self._tok)})."
            )

    def _verify_single_tokens(self, strings: Sequence[str]) -> List[int]:
        ids = []
        bad = []
        for s in strings:
            enc = self._raw_encode(s)
            if len(enc) != 1:
                bad.append(f"{s!r} -> {enc} {self._tok.convert_ids_to_tokens(enc)}")
            else:
                ids.append(enc[0])
        if bad:
            raise TokenizerError(
                f"expected every image token to encode to exactly one id, found {len(bad)} that do not: "
                f"{'; '.join(bad[:3])}. The tokens are in the vocabulary but not registered as added tokens; "
                "rebuild the tokenizer folder from the base LLaMA tokenizer (SeedStoryTokenizer.from_folder adds them)."
            )
        specials = {self._tok.bos_token_id, self._tok.eos_token_id, self._tok.unk_token_id}
        clash = [i for i in ids if i in specials]
        if clash or len(set(ids)) != len(ids):
            raise TokenizerError(f"expected distinct image token ids different from BOS/EOS/UNK, found {ids[:6]}...")
        return ids

    def _verify_chunking(self) -> None:
        # The legacy LLaMA behaviour: the text after an image tag is encoded as a fresh text (dummy prefix).
        probe = "[INST]Ab, c."
        run = self._image_run_string
        got = self._raw_encode(run + probe + run)
        want = self._image_ids.forced_sequence + self._raw_encode(probe) + self._image_ids.forced_sequence
        if got != want:
            raise TokenizerError(
                "expected the legacy LLaMA chunking (text after an image tag tokenized like a fresh text, as in "
                "SEED-Story training, docs/reference.md §5), "
                f"found {self._tok.convert_ids_to_tokens(got[66:-66])} instead of "
                f"{self._tok.convert_ids_to_tokens(want[66:-66])}. The image tokens are probably registered with "
                "normalized=True; rebuild the folder from the base LLaMA tokenizer with SeedStoryTokenizer.from_folder."
            )


# ---------------------------------------------------------------------- backends


def wrap_fast_tokenizer(backend: Tokenizer, source: str) -> PreTrainedTokenizerFast:
    """Wrap a ``tokenizers.Tokenizer`` in transformers' ``PreTrainedTokenizerFast`` without changing it.

    BOS / EOS are :data:`BOS_TOKEN` / :data:`EOS_TOKEN` (and UNK :data:`UNK_TOKEN` when the vocabulary has it);
    ``clean_up_tokenization_spaces=False`` (docs/reference.md §2.1, §3.1).

    Args:
        backend (tokenizers.Tokenizer): the trained / loaded tokenizer.
        source (str): where it came from (a file name or a function name), for the error message.

    Returns:
        transformers.PreTrainedTokenizerFast, ready for :class:`SeedStoryTokenizer`.

    Raises:
        TokenizerError: if the vocabulary lacks ``<s>`` or ``</s>``.
    """
    vocab = backend.get_vocab(with_added_tokens=True)
    missing = [t for t in (BOS_TOKEN, EOS_TOKEN) if t not in vocab]
    if missing:
        raise TokenizerError(
            f"expected a LLaMA-style tokenizer with {BOS_TOKEN!r} and {EOS_TOKEN!r}, found none of {missing} in "
            f"{source}."
        )
    kwargs = dict(
        tokenizer_object=backend, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, clean_up_tokenization_spaces=False
    )
    if UNK_TOKEN in vocab:
        kwargs["unk_token"] = UNK_TOKEN
    return PreTrainedTokenizerFast(**kwargs)


def _is_sentencepiece(tok) -> bool:
    return hasattr(tok, "sp_model")


def _load_sentencepiece_folder(folder: Path):
    """The slow sentencepiece LLaMA tokenizer (legacy=True) from ``tokenizer.model`` + ``added_tokens.json``."""
    if SentencePieceBackend is None:
        raise ImportError(
            f"{folder} holds only tokenizer.model, which needs the 'sentencepiece' package: pip install "
            "sentencepiece (or provide a tokenizer.json)."
        ) from _SENTENCEPIECE_IMPORT_ERROR
    tok = SentencePieceBackend(
        vocab_file=str(folder / "tokenizer.model"),
        legacy=True,
        unk_token=UNK_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
    )
    added_file = folder / "added_tokens.json"
    if added_file.is_file():
        try:
            added = json.loads(added_file.read_text(encoding="utf-8"))
            items = sorted((int(i), str(s)) for s, i in added.items())
        except (ValueError, AttributeError, TypeError) as exc:
            raise TokenizerError(
                f"expected {added_file} to be a JSON object {{token: id}}, could not read it ({exc})."
            ) from exc
        for want_id, content in items:
            if content in tok.get_vocab():
                continue
            tok.add_tokens([AddedToken(content, lstrip=False, rstrip=False, normalized=False, special=False)])
            got = tok.convert_tokens_to_ids(content)
            if got != want_id:
                raise TokenizerError(
                    f"{added_file} gives {content!r} id {want_id}, but adding it in id order produced id {got}. "
                    "The added ids must follow the base vocabulary without gaps."
                )
    return tok

"""Tests of seedstory_core.tokenizer: the LLaMA-2 tokenizer + 66 image tokens (docs/reference.md §2.1, §3.1, §5).

Tests marked "real" need the LLaMA-2 tokenizer: $SEEDSTORY_LLAMA2_TOKENIZER or <repo>/.cache/llama2_tokenizer,
written by scripts/fetch_llama2_tokenizer.sh. They skip (with that hint) when it is absent -- except under
``CI=true`` or ``SEEDSTORY_REQUIRE_LLAMA_TOKENIZER=1``, where that is a failure (conftest.require_or_skip).
"""

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tests.conftest import require_or_skip

from seedstory_core.config import ImageTokenSettings
from seedstory_core.tiny import build_tiny_tokenizer, default_tiny_tokenizer, tiny_story_corpus
from seedstory_core.tokenizer import SeedStoryTokenizer, TokenizerError
from seedstory_core.tokens import ImageTokens, TokenKind, image_segment_kinds

try:  # optional: only the slow-backend test needs it
    import sentencepiece as spm
except ImportError:
    spm = None

REPO_ROOT = Path(__file__).resolve().parents[2]

# Realistic captions: leading capitals, punctuation, apostrophes, quotes, numbers, a non-ASCII word.
CAPTIONS = [
    "George and his friend Pedro are playing in the garden.",
    '"Look, Daddy Pig!" George shouts, pointing at 3 big, muddy puddles.',
    "It's raining now; George's boots are red, and Peppa's are yellow.",
    "At 10 o'clock, they visit Grandpa Pig's boat (it is called 'The Sea Dog').",
    "Suddenly, a café owner waves: 'Hello!' Everyone laughs - even Mummy Pig.",
    "  Two spaces lead this one, and it ends with a space ",
]


def llama2_folder() -> Path:
    env = os.environ.get("SEEDSTORY_LLAMA2_TOKENIZER")
    return Path(env) if env else REPO_ROOT / ".cache" / "llama2_tokenizer"


@pytest.fixture(scope="module")
def llama2() -> SeedStoryTokenizer:
    folder = llama2_folder()
    if not (folder / "tokenizer.json").is_file() and not (folder / "tokenizer.model").is_file():
        require_or_skip(
            f"real LLaMA-2 tokenizer not found at {folder}; run scripts/fetch_llama2_tokenizer.sh "
            "(scripts/setup_env.sh does) or set SEEDSTORY_LLAMA2_TOKENIZER",
            "SEEDSTORY_REQUIRE_LLAMA_TOKENIZER",
        )
    return SeedStoryTokenizer.from_folder(folder)


@pytest.fixture(scope="module")
def tiny() -> SeedStoryTokenizer:
    return default_tiny_tokenizer()


def story_prompt(tok, captions):
    """caption0 + IMG + '[INST]' + caption1 + IMG + ... (docs/reference.md §3.1 / §5), ending with the last caption."""
    img = tok.image_token_string()
    return img.join([captions[0]] + [tok.instruction(c) for c in captions[1:]])


def incremental_ids(tok, captions):
    run = tok.image_ids.forced_sequence
    ids = tok.encode(captions[0])
    for c in captions[1:]:
        ids += run + tok.encode(tok.instruction(c))
    return ids


# ---------------------------------------------------------------------------------------------- ImageTokens


def test_image_token_ids_helpers():
    ids = ImageTokens(boi=10, eoi=11, img=(12, 13, 14))
    assert ids.all_ids == (10, 11, 12, 13, 14)
    assert ids.forced_sequence == [10, 12, 13, 14, 11]
    assert ids.num_img_tokens == 3
    K = TokenKind
    assert image_segment_kinds(ids.num_img_tokens) == [K.BOI, K.IMG, K.IMG, K.IMG, K.EOI]
    assert image_segment_kinds(2, eoi=False) == [K.BOI, K.IMG, K.IMG]
    with pytest.raises(ValueError, match="num_img_tokens >= 1"):
        image_segment_kinds(0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(boi=1, eoi=1, img=(3,)),
        dict(boi=-1, eoi=2, img=(3,)),
        dict(boi=1, eoi=2, img=()),
        dict(boi=1, eoi=2, img=(3.0,)),
    ],
)
def test_image_token_ids_rejects_bad_ids(kwargs):
    with pytest.raises(ValueError, match="ImageTokens: expected"):
        ImageTokens(**kwargs)


# ---------------------------------------------------------------------------------------------- text helpers


def test_clean_text_is_the_official_regex():
    img = "<img>" + "".join(f"<img_{i:05d}>" for i in range(3)) + "</img>"
    assert SeedStoryTokenizer.clean_text("[INST]George runs." + img + "</s>") == "[INST]George runs."
    assert SeedStoryTokenizer.clean_text("a <img> b") == "a b"
    assert SeedStoryTokenizer.clean_text("  x</s>") == "x"
    assert SeedStoryTokenizer.clean_text("a<b>c<d>e") == "a c e"
    with pytest.raises(TypeError, match="expected a str"):
        SeedStoryTokenizer.clean_text(None)


def test_strip_inst_and_instruction():
    assert SeedStoryTokenizer.instruction("Hi.") == "[INST]Hi."
    assert SeedStoryTokenizer.strip_inst("[INST]George runs. ") == "George runs."
    assert SeedStoryTokenizer.strip_inst("No marker") == "No marker"


# ---------------------------------------------------------------------------------------------- real LLaMA-2


def test_real_base_and_image_ids(llama2):
    assert llama2.base_vocab_size == 32000
    assert llama2.vocab_size == 32066 == len(llama2)
    assert (llama2.bos_id, llama2.eos_id, llama2.pad_id, llama2.unk_id) == (1, 2, 0, 0)
    ids = llama2.image_ids
    assert (ids.boi, ids.eoi) == (32000, 32001)
    assert ids.img == tuple(range(32002, 32066))
    assert llama2.num_img_tokens == 64
    # The official look-up: encode(tok, add_special_tokens=False)[0] (docs/reference.md §2.1).
    assert llama2.encode_prompt("<img>") == [32000]
    assert llama2.encode_prompt("</img>") == [32001]
    assert llama2.encode_prompt("<img_00063>") == [32065]


def test_real_is_llama2_not_another_32k_vocab(llama2):
    # Ids of the original LLaMA sentencepiece model (Mistral's 32k vocab gives e.g. 22557 for "Hello").
    assert llama2.encode("Hello world!") == [15043, 3186, 29991]
    assert llama2.encode("grabbed") == [2646, 1327, 287]
    assert llama2.encode(" grabbed") == [29871, 2646, 1327, 287]
    assert llama2.encode("ax\n####\nboo") == [4853, 13, 4136, 13, 833, 29877]
    assert llama2.encode("🦙") == [29871, 243, 162, 169, 156]


def test_real_inst_pieces(llama2):
    assert llama2.inst_ids == (518, 25580, 29962)
    assert llama2.tokens(llama2.inst_ids) == ["\u2581[", "INST", "]"]
    # Right after </img> inside a prompt, exactly as at the start of a chunk.
    ids = llama2.encode_prompt("</img>[INST]George")
    assert ids[:4] == [32001, 518, 25580, 29962]


def test_real_image_run_and_no_stray_spaces(llama2):
    img_run = [32000] + list(range(32002, 32066)) + [32001]
    cap0, cap1 = CAPTIONS[0], CAPTIONS[1]
    first = llama2.encode_prompt(cap0 + llama2.image_token_string())
    assert first[-66:] == img_run
    assert first[:-66] == llama2.encode(cap0)
    prompt = cap0 + llama2.image_token_string() + "[INST]" + cap1 + llama2.image_token_string()
    ids = llama2.encode_prompt(prompt)
    starts = [i for i, t in enumerate(ids) if t == 32000]
    assert len(starts) == 2
    for s in starts:
        assert ids[s : s + 66] == img_run
        assert ids[s - 1] != 29871, "lone '▁' before <img>"
        if s + 66 < len(ids):
            assert ids[s + 66] != 29871, "lone '▁' after </img>"
    pieces = llama2.tokens(ids)
    for i, t in enumerate(ids):
        if t in (32000, 32001) and i + 1 < len(ids) and ids[i + 1] < 32000:
            assert pieces[i + 1] == "\u2581[", pieces[i + 1]  # '[INST]' follows directly
        if t == 32000:
            assert not pieces[i - 1].endswith("\u2581"), pieces[i - 1]


@pytest.mark.parametrize("shift", range(len(CAPTIONS) - 2))
def test_real_chunk_independence(llama2, shift):
    caps = CAPTIONS[shift : shift + 3]
    prompt = story_prompt(llama2, caps)
    assert llama2.encode_prompt(prompt) == incremental_ids(llama2, caps)


def test_real_chunk_independence_with_trailing_image(llama2):
    caps = CAPTIONS[:4]
    prompt = story_prompt(llama2, caps) + llama2.image_token_string()
    assert llama2.encode_prompt(prompt) == incremental_ids(llama2, caps) + llama2.image_ids.forced_sequence


def test_real_window_cut_matches_training_layout(llama2):
    # gen_george.py's window (docs/reference.md §3.1 step 5): cut after the first '</img>' plus len('[INST]')
    # characters.
    prompt = story_prompt(llama2, CAPTIONS[:3]) + llama2.image_token_string()
    cut = prompt[prompt.index("</img>") + len("</img>") + len("[INST]") :]
    assert cut.startswith(CAPTIONS[1])
    expected = incremental_ids(llama2, CAPTIONS[1:3]) + llama2.image_ids.forced_sequence
    assert llama2.encode_prompt(cut) == expected


def test_real_decode_round_trips(llama2):
    for cap in CAPTIONS[:5]:
        assert llama2.decode(llama2.encode(cap)) == cap
        chunk = llama2.instruction(cap)
        assert llama2.decode(llama2.encode(chunk)) == chunk
        generated = llama2.encode(chunk) + llama2.image_ids.forced_sequence + [llama2.eos_id]
        assert llama2.decode(generated) == chunk  # official cleaning keeps '[INST]', drops tags and </s>
        raw = llama2.decode(generated, keep_image_tags=True)
        assert raw.startswith(chunk) and "<img_00063></img>" in raw and raw.endswith("</s>")
    prompt = story_prompt(llama2, CAPTIONS[:3])
    assert llama2.decode(llama2.encode_prompt(prompt)) == SeedStoryTokenizer.clean_text(prompt)
    assert llama2.decode(llama2.encode_prompt(prompt), keep_image_tags=True) == prompt


def test_real_save_and_reload(llama2, tmp_path):
    llama2.save(tmp_path / "tok")
    again = SeedStoryTokenizer.from_folder(tmp_path / "tok")
    assert again.image_ids == llama2.image_ids
    assert again.vocab_size == 32066 and again.inst_ids == llama2.inst_ids
    prompt = story_prompt(llama2, CAPTIONS[:3])
    assert again.encode_prompt(prompt) == llama2.encode_prompt(prompt)
    info = json.loads((tmp_path / "tok" / "seedstory_tokenizer.json").read_text())
    assert info["boi_id"] == 32000 and info["img_ids"][-1] == 32065


def test_real_folder_with_image_tags_as_plain_pieces_is_reported(llama2, tmp_path):
    # '<img>'... present in the vocabulary as ordinary BPE pieces (not added tokens): they do not encode to one id.
    data = json.loads((llama2_folder() / "tokenizer.json").read_text(encoding="utf-8"))
    strings = ["<img>", "</img>"] + ImageTokenSettings().img_strings()
    for k, s in enumerate(strings):
        data["model"]["vocab"][s] = 32000 + k
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="exactly one id"):
        SeedStoryTokenizer.from_folder(tmp_path)


# ---------------------------------------------------------------------------------------------- tiny tokenizer


def test_tiny_layout(tiny):
    assert tiny.base_vocab_size == 1000 and tiny.vocab_size == 1066
    assert (tiny.unk_id, tiny.bos_id, tiny.eos_id, tiny.pad_id) == (0, 1, 2, 0)
    assert tiny.tokens([0, 1, 2, 3, 258]) == ["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]
    ids = tiny.image_ids
    assert (ids.boi, ids.eoi, ids.img) == (1000, 1001, tuple(range(1002, 1066)))
    assert tiny.decode(tiny.inst_ids) == "[INST]"


@pytest.mark.parametrize("vocab_size", [380, 1000, 3000])
def test_tiny_exact_base_vocab_size(vocab_size):
    texts = tiny_story_corpus(60)
    tok = build_tiny_tokenizer(texts, vocab_size)
    assert tok.base_vocab_size == vocab_size
    assert tok.vocab_size == vocab_size + 66
    assert tok.image_ids.boi == vocab_size and tok.image_ids.img[-1] == vocab_size + 65


def test_tiny_filler_pieces_are_never_produced():
    tok = build_tiny_tokenizer(["a tiny corpus, a tiny corpus."], 2000)
    assert tok.base_vocab_size == 2000
    assert tok.tokens([1999])[0].startswith("<unused_")
    text = "<unused_00000> a tiny corpus"
    ids = tok.encode(text)
    assert tok.decode(ids, keep_image_tags=True) == text
    assert not any(p.startswith("<unused_") for p in tok.tokens(ids))


def test_tiny_deterministic_in_process_and_across_processes(tiny):
    texts = tiny_story_corpus()
    a = build_tiny_tokenizer(texts, 1000)
    assert a.hf_tokenizer.backend_tokenizer.to_str() == tiny.hf_tokenizer.backend_tokenizer.to_str()
    code = (
        "from seedstory_core.tiny import default_tiny_tokenizer as d;"
        "t=d();import hashlib,sys;"
        "sys.stdout.write(hashlib.sha256(t.hf_tokenizer.backend_tokenizer.to_str().encode()).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out == hashlib.sha256(tiny.hf_tokenizer.backend_tokenizer.to_str().encode()).hexdigest()


@pytest.mark.parametrize("shift", range(len(CAPTIONS) - 2))
def test_tiny_chunk_independence(tiny, shift):
    caps = CAPTIONS[shift : shift + 3]
    prompt = story_prompt(tiny, caps) + tiny.image_token_string()
    assert tiny.encode_prompt(prompt) == incremental_ids(tiny, caps) + tiny.image_ids.forced_sequence


def test_tiny_text_after_image_tag_gets_dummy_prefix(tiny):
    run = tiny.image_ids.forced_sequence
    ids = tiny.encode_prompt(tiny.image_token_string() + "[INST]George")
    assert ids[:66] == run
    assert ids[66:] == tiny.encode("[INST]George")
    assert tiny.tokens(ids[66:67])[0].startswith("\u2581")


def test_tiny_decode_round_trips_with_byte_fallback(tiny):
    for text in CAPTIONS[:5] + ["Zoë ate 🦙 crêpes."]:
        assert tiny.decode(tiny.encode(text)) == text
    prompt = story_prompt(tiny, CAPTIONS[:3])
    assert tiny.decode(tiny.encode_prompt(prompt), keep_image_tags=True) == prompt


def test_tiny_save_and_reload(tiny, tmp_path):
    tiny.save(tmp_path)
    again = SeedStoryTokenizer.from_folder(tmp_path)
    assert again.image_ids == tiny.image_ids and again.vocab_size == tiny.vocab_size
    prompt = story_prompt(tiny, CAPTIONS[:3])
    assert again.encode_prompt(prompt) == tiny.encode_prompt(prompt)


def test_tiny_custom_image_tokens():
    settings = ImageTokenSettings(num_img_tokens=4)
    tok = build_tiny_tokenizer(tiny_story_corpus(50), 400, settings)
    assert tok.image_ids.forced_sequence == [400, 402, 403, 404, 405, 401]
    assert tok.image_token_string() == "<img><img_00000><img_00001><img_00002><img_00003></img>"
    assert tok.vocab_size == 406


def test_tiny_rejects_bad_training_input():
    with pytest.raises(ValueError, match="expected vocab_size >="):
        build_tiny_tokenizer(["hello"], 300)
    with pytest.raises(ValueError, match="at least one non-empty"):
        build_tiny_tokenizer(["", ""], 1000)
    with pytest.raises(TypeError, match="expected texts to be strings"):
        build_tiny_tokenizer(["ok", 3], 1000)


# ---------------------------------------------------------------------------------------------- errors


def test_encode_and_decode_errors(tiny):
    with pytest.raises(ValueError, match="non-empty"):
        tiny.encode("")
    with pytest.raises(ValueError, match="non-empty"):
        tiny.encode_prompt("")
    with pytest.raises(TypeError, match="expected a str"):
        tiny.encode(b"bytes")
    with pytest.raises(ValueError, match="without image tags"):
        tiny.encode("a<img>b")
    with pytest.raises(ValueError, match=r"in \[0, 1066\), found 1066"):
        tiny.decode([5, 1066])
    with pytest.raises(ValueError, match=r"found -1"):
        tiny.decode([-1])
    with pytest.raises(TypeError, match="integer token ids"):
        tiny.decode([1.5])
    with pytest.raises(TypeError, match="found a string"):
        tiny.decode("12")


def test_decode_accepts_tensors(tiny):
    ids = tiny.encode("George runs.")
    assert tiny.decode(torch.tensor(ids)) == "George runs."
    with pytest.raises(ValueError, match="1-D"):
        tiny.decode(torch.tensor([ids]))


def test_missing_folder_and_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch_llama2_tokenizer.sh"):
        SeedStoryTokenizer.from_folder(tmp_path / "nope")
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="expected tokenizer.json or tokenizer.model"):
        SeedStoryTokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="could not parse"):
        SeedStoryTokenizer.from_folder(tmp_path)


def test_partially_present_image_tokens_are_reported(tiny, tmp_path):
    data = json.loads(tiny.hf_tokenizer.backend_tokenizer.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] != "<img_00005>"]
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="all 66 image tokens or none"):
        SeedStoryTokenizer.from_folder(tmp_path)


def test_normalized_image_tokens_are_reported(tiny, tmp_path):
    # Tokens registered with normalized=True lose the dummy prefix after </img>: not the training layout.
    data = json.loads(tiny.hf_tokenizer.backend_tokenizer.to_str())
    for t in data["added_tokens"]:
        if t["content"].startswith(("<img", "</img")):
            t["normalized"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TokenizerError, match="legacy LLaMA chunking"):
        SeedStoryTokenizer.from_folder(tmp_path)


# ---------------------------------------------------------------------------------------------- slow backend


def test_sentencepiece_folder_legacy_behaviour(tmp_path):
    if spm is None:
        require_or_skip(
            "sentencepiece is not installed (requirements-comfyui.txt installs it: scripts/setup_env.sh)",
            "SEEDSTORY_REQUIRE_SENTENCEPIECE",
        )
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_story_corpus()),
        model_writer=model,
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        minloglevel=2,
    )
    folder = tmp_path / "spm"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    tok = SeedStoryTokenizer.from_folder(folder)
    assert type(tok.hf_tokenizer).__name__ == "SentencePieceBackend"
    assert tok.base_vocab_size == 400 and tok.image_ids.boi == 400 and tok.image_ids.img[-1] == 465
    assert tok.tokens(tok.inst_ids)[0] == "\u2581["
    caps = CAPTIONS[:3]
    prompt = story_prompt(tok, caps)
    assert tok.encode_prompt(prompt) == incremental_ids(tok, caps)
    assert tok.decode(tok.encode(tok.instruction(caps[1])) + tok.image_ids.forced_sequence) == "[INST]" + caps[1]
    # Saved like the released cvlm_llama2_tokenizer: tokenizer.model + added_tokens.json.
    tok.save(tmp_path / "saved")
    added = json.loads((tmp_path / "saved" / "added_tokens.json").read_text())
    assert added["<img>"] == 400 and added["<img_00063>"] == 465
    again = SeedStoryTokenizer.from_folder(tmp_path / "saved")
    assert again.image_ids == tok.image_ids
    assert again.encode_prompt(prompt) == tok.encode_prompt(prompt)

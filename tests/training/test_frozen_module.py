"""training.common.frozen_module: a borrowed module (e.g. ComfyUI's loaded agent given to stage 3 in memory) is never
moved or cast in place; a module the stage loaded itself is."""

import torch

from training.common import frozen_module


def test_borrowed_module_elsewhere_is_copied_and_the_original_keeps_its_dtype():
    original = torch.nn.Linear(4, 4).to(torch.bfloat16)
    weight = original.weight.detach().clone()
    frozen = frozen_module(original, "cpu", torch.float32, borrowed=True)
    assert frozen is not original and frozen.weight.dtype == torch.float32 and not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    assert original.weight.dtype == torch.bfloat16 and torch.equal(original.weight.detach(), weight)


def test_borrowed_module_already_in_place_is_used_as_it_is():
    original = torch.nn.Linear(4, 4)
    assert frozen_module(original, torch.device("cpu"), torch.float32, borrowed=True) is original


def test_owned_module_is_cast_in_place():
    owned = torch.nn.Linear(4, 4).to(torch.bfloat16)
    frozen = frozen_module(owned, "cpu", torch.float32, borrowed=False)
    assert frozen is owned and owned.weight.dtype == torch.float32

"""A random tiny SEED-Story agent whose LoRA adapters take part in every forward (the engine tests' model)."""

import torch

from seedstory_core.agent import SeedStoryAgent
from seedstory_core.tiny import tiny_config


def lora_tiny_agent(seed: int = 0) -> SeedStoryAgent:
    """The tiny preset's agent built under ``torch.manual_seed(seed)``, in eval mode, with every LoRA B matrix drawn
    from N(0, 0.02) (peft initialises them to zero, which would leave the adapters out of every forward)."""
    torch.manual_seed(seed)
    agent = SeedStoryAgent.build(tiny_config().agent).eval()
    with torch.no_grad():
        for name, p in agent.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return agent

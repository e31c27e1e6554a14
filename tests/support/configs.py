"""Small model configurations shared by the test modules."""

from __future__ import annotations

from seedstory_core.config import AgentConfig, ImageTokenSettings, LlamaSettings, LoraSettings, ResamplerConfig


def small_config(base_vocab=50, n_img=4, vit_grid=4, hidden=64) -> AgentConfig:
    """A fast agent config (2 layers) with the official structure."""
    return AgentConfig(
        llm=LlamaSettings(
            vocab_size=base_vocab + 2 + n_img,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
        ),
        lora=LoraSettings(r=4, lora_alpha=8, lora_dropout=0.0),
        input_resampler=ResamplerConfig(grid_size=int(n_img**0.5), embed_dim=hidden, num_heads=4, kv_dim=hidden),
        output_resampler=ResamplerConfig(grid_size=vit_grid, embed_dim=hidden, num_heads=4, kv_dim=hidden),
        image_tokens=ImageTokenSettings(num_img_tokens=n_img),
    )

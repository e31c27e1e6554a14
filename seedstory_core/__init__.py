"""seedstory_core: SEED-Story (multimodal long story generation) as a pure torch/transformers/diffusers library.

Importable without ComfyUI. Components: visual tokenizer (Qwen-VL ViT-G), MLLM agent (LLaMA + LoRA + input/output
resamplers), de-tokenizer (ResamplerXLV2 + SD-XL), the multimodal attention-sink KV cache and the story engine.
"""

__version__ = "0.1.0"

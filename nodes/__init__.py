"""SeedStory ComfyUI nodes (classic V1 API). Importing this package never imports ComfyUI modules."""

from .loaders import (
    SeedStoryAgentLoader,
    SeedStoryDetokenizerLoader,
    SeedStoryTinyModelLoader,
    SeedStoryVisualTokenizerLoader,
)
from .output import SeedStoryFreeMemory, SeedStorySaveStory
from .render import SeedStoryDetokenize, SeedStoryFeaturesToConditioning
from .story import (
    SeedStoryGenerateStory,
    SeedStoryStorySettings,
    SeedStoryStoryStart,
    SeedStoryStoryStep,
    SeedStoryViTTokenize,
)
from .training import SeedStoryAdaptDetokenizer

NODE_CLASS_MAPPINGS = {
    "SeedStoryTinyModelLoader": SeedStoryTinyModelLoader,
    "SeedStoryVisualTokenizerLoader": SeedStoryVisualTokenizerLoader,
    "SeedStoryAgentLoader": SeedStoryAgentLoader,
    "SeedStoryDetokenizerLoader": SeedStoryDetokenizerLoader,
    "SeedStoryViTTokenize": SeedStoryViTTokenize,
    "SeedStoryStorySettings": SeedStoryStorySettings,
    "SeedStoryStoryStart": SeedStoryStoryStart,
    "SeedStoryStoryStep": SeedStoryStoryStep,
    "SeedStoryGenerateStory": SeedStoryGenerateStory,
    "SeedStoryDetokenize": SeedStoryDetokenize,
    "SeedStoryFeaturesToConditioning": SeedStoryFeaturesToConditioning,
    "SeedStorySaveStory": SeedStorySaveStory,
    "SeedStoryFreeMemory": SeedStoryFreeMemory,
    "SeedStoryAdaptDetokenizer": SeedStoryAdaptDetokenizer,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "SeedStoryTinyModelLoader": "SeedStory Tiny Model Loader",
    "SeedStoryVisualTokenizerLoader": "SeedStory Visual Tokenizer Loader",
    "SeedStoryAgentLoader": "SeedStory Agent Loader",
    "SeedStoryDetokenizerLoader": "SeedStory De-tokenizer Loader",
    "SeedStoryViTTokenize": "SeedStory ViT Tokenize",
    "SeedStoryStorySettings": "SeedStory Story Settings",
    "SeedStoryStoryStart": "SeedStory Story Start",
    "SeedStoryStoryStep": "SeedStory Story Step",
    "SeedStoryGenerateStory": "SeedStory Generate Story",
    "SeedStoryDetokenize": "SeedStory De-tokenize",
    "SeedStoryFeaturesToConditioning": "SeedStory Features to Conditioning",
    "SeedStorySaveStory": "SeedStory Save Story",
    "SeedStoryFreeMemory": "SeedStory Free Memory",
    "SeedStoryAdaptDetokenizer": "SeedStory Adapt De-tokenizer",
}

#: Other words users search for: ComfyUI 0.30.0 sends ``SEARCH_ALIASES`` as ``search_aliases`` in /object_info and
#: its node search matches them (0.3.75 ignores the attribute). One table here, set on the classes below, so the node
#: files stay untouched.
SEARCH_ALIASES = {
    "SeedStoryTinyModelLoader": ["story", "storybook", "comic", "storyboard", "seed story", "load story model"],
    "SeedStoryVisualTokenizerLoader": ["load vit", "qwen-vl vit", "visual encoder", "seed story"],
    "SeedStoryAgentLoader": ["load llm", "llama lora", "story model", "mllm", "seed story"],
    "SeedStoryDetokenizerLoader": ["load detokenizer", "sdxl unet", "seed story"],
    "SeedStoryViTTokenize": ["encode image", "image features", "clip vision encode"],
    "SeedStoryStorySettings": ["attention sink", "kv cache", "sliding window", "long story"],
    "SeedStoryStoryStart": ["story", "comic", "storyboard", "begin story", "first panel"],
    "SeedStoryStoryStep": ["story", "comic", "storyboard", "next panel", "continue story", "branch"],
    "SeedStoryGenerateStory": [
        "story",
        "comic",
        "storyboard",
        "storybook",
        "picture book",
        "illustrated story",
        "narrative",
        "panels",
    ],
    "SeedStoryDetokenize": ["render", "decode features", "image from features", "story frames"],
    "SeedStoryFeaturesToConditioning": ["conditioning", "sdxl", "ksampler", "image prompt"],
    "SeedStorySaveStory": ["save", "storybook", "comic", "storyboard", "html", "picture book"],
    "SeedStoryFreeMemory": ["unload models", "clear cache", "free vram", "free memory"],
    "SeedStoryAdaptDetokenizer": ["train", "fine-tune", "finetune", "training", "adapt"],
}

for _node_id, _aliases in SEARCH_ALIASES.items():
    NODE_CLASS_MAPPINGS[_node_id].SEARCH_ALIASES = list(_aliases)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "SEARCH_ALIASES"]

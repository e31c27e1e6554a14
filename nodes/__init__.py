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

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

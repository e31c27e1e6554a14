"""Data: StoryStream jsonl reading/chunking, the StoryStream-mini generator and the attribute probe.

Submodules (import them directly; ``probe`` imports torch):

* :mod:`seedstory_core.data.storystream` - ``read_jsonl``, ``iter_jsonl``, ``load_image``, ``chunk_stories``;
* :mod:`seedstory_core.data.mini` - StoryStream-mini generator and caption grammar (``generate_story``,
  ``generate_dataset``, ``parse_sentence``, ``sentence_attributes``, ``parse_story``);
* :mod:`seedstory_core.data.probe` - attribute probe (``train_probe``, ``AttributeProbe``) and scores
  (``coherence``, ``consistency``, ``parse_rate``).
"""

from .storystream import StoryStreamError, chunk_stories, iter_jsonl, load_image, read_jsonl, write_jsonl

__all__ = ["StoryStreamError", "chunk_stories", "iter_jsonl", "load_image", "read_jsonl", "write_jsonl"]

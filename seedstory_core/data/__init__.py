"""Data: StoryStream jsonl reading/chunking, the StoryStream-mini generator and the training sample builder.

Submodules (import them directly):

* :mod:`seedstory_core.data.storystream` - ``read_jsonl``, ``iter_jsonl``, ``load_image``, ``chunk_stories``;
* :mod:`seedstory_core.data.mini` - StoryStream-mini generator and caption grammar (``generate_story``,
  ``generate_dataset``, ``parse_sentence``, ``sentence_attributes``, ``parse_story``);
* :mod:`seedstory_core.data.samples` - the training sample builder (docs/reference.md §5) and collate.

Frames are judged by the evaluation's one fixed judge, ``evaluation/judge`` (not part of this package).
"""

from .storystream import StoryStreamError, chunk_stories, iter_jsonl, load_image, read_jsonl, write_jsonl

__all__ = ["StoryStreamError", "chunk_stories", "iter_jsonl", "load_image", "read_jsonl", "write_jsonl"]

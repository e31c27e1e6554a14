"""The evaluation of SEED-Story models on held-out StoryStream-mini stories (docs/evaluation.md).

Modules, from the bottom up (each imports only those above it, ``seedstory_core`` and third-party libraries; never
``training``, ``bench`` or ``nodes``, which may import this package):

* :mod:`evaluation.metrics` — the scoring rules: the per-frame judgement, the story metrics, bootstrap intervals;
* :mod:`evaluation.judge` — the one fixed frame judge (``evaluation/judge/judge.safetensors``, sha256-checked;
  ``python -m evaluation.judge`` rebuilds it);
* :mod:`evaluation.stories` — the model under test and its held-out stories: loading a bundle, continuing a story
  (generation or visualization mode, optionally teacher-forced), the frames' features, pixel distance;
* :mod:`evaluation.evaluate` — the evaluation itself, its baselines and the long-story cache-policy ablation
  (``python -m evaluation.evaluate``);
* :mod:`evaluation.decoding` — which decoding setting stops the stories from looping (``python -m
  evaluation.decoding``).

``evaluation/results/`` holds the evaluation JSONs the docs and the model card cite, and the two scripts that turn
them into tables and paired differences (``table.py``, ``paired.py``).
"""

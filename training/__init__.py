"""SEED-Story training (docs/reference.md §6) on HuggingFace accelerate.

Stages (each a module runnable with ``python -m`` or ``accelerate launch -m``, and a Python function in it):

* ``training.vae``                 stage 0, tiny models only: train the random tiny VAE     -> ``train_vae``
* ``training.stage1_detokenizer``  de-tokenizer pretraining (ViT features -> SD-XL)         -> ``train_stage1``
* ``training.stage2_instruction``  story instruction tuning of the agent (LoRA, CE + cosine) -> ``train_stage2``
* ``training.stage3_adaptation``   de-tokenizer adaptation to the agent's regressed features -> ``train_stage3``,
  ``run_stage3(progress=, cancel=, **options)`` for in-process use (ComfyUI)

Import the functions from their modules (``from training.stage3_adaptation import run_stage3``): the package itself
imports nothing, so that importing one stage (or :mod:`training.common`) does not import the others.

Every stage reads a model bundle (``--init tiny`` or ``--init bundle:PATH``) and writes ``OUT/model``, a
:class:`seedstory_core.bundle.SeedStoryBundle` folder that the next stage (and the loaders) read, plus
``OUT/checkpoints/step-N`` (accelerate ``save_state``, resumable) and ``OUT/train_log.csv``.
Accelerate configs: ``training/configs/``.
"""

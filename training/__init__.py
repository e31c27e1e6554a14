"""SEED-Story training (docs/reference.md §6) on HuggingFace accelerate.

Stages (each a module runnable with ``python -m`` or ``accelerate launch -m``, and a Python function):

* ``training.vae``                 stage 0, tiny models only: train the random tiny VAE     -> ``train_vae``
* ``training.stage1_detokenizer``  de-tokenizer pretraining (ViT features -> SD-XL)         -> ``train_stage1``
* ``training.stage2_instruction``  story instruction tuning of the agent (LoRA, CE + cosine) -> ``train_stage2``
* ``training.stage3_adaptation``   de-tokenizer adaptation to the agent's regressed features -> ``train_stage3``,
  ``run_stage3(progress=, cancel=, **options)`` for in-process use (ComfyUI)

Every stage reads a model bundle (``--init tiny`` or ``--init bundle:PATH``) and writes ``OUT/model``, a
:class:`seedstory_core.bundle.SeedStoryBundle` folder that the next stage (and the loaders) read, plus
``OUT/checkpoints/step-N`` (accelerate ``save_state``, resumable) and ``OUT/train_log.csv``.
Accelerate configs: ``training/configs/``.
"""

__all__ = ["train_vae", "train_stage1", "train_stage2", "train_stage3", "run_stage3"]


def __getattr__(name):  # lazy: importing the package stays cheap
    if name == "train_vae":
        from .vae import train_vae

        return train_vae
    if name == "train_stage1":
        from .stage1_detokenizer import train_stage1

        return train_stage1
    if name == "train_stage2":
        from .stage2_instruction import train_stage2

        return train_stage2
    if name in ("train_stage3", "run_stage3"):
        from . import stage3_adaptation

        return getattr(stage3_adaptation, name)
    raise AttributeError(name)

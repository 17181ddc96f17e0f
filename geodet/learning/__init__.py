"""Training: chips and their labels in, a model file out.

``tiling`` (chips + COCO on disk), ``dataset``, ``training`` (the run),
``train_state`` (resumable checkpoints), ``distributed`` (DDP set-up),
``anchor_fit`` (anchors fitted to a training set, its coverage report).
Imports ``core``, ``io`` and ``modeling``.
"""

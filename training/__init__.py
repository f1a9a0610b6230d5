"""Training HEViTPose: datasets, augmentation, the loop, evaluation and export.

The recipe follows MMPose 0.29's top-down heatmap configs (see ``configs/`` and
``docs/training.md``). ``service/`` never imports this package.
"""

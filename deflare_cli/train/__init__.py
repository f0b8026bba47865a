"""Training the network on paired recordings.

- :mod:`.trainer`: the :class:`Trainer` (the loop, validation, checkpoints) and its result;
- :mod:`.data`: the voxel cache and the datasets of segment pairs;
- :mod:`.sampler`: the seeded, sharded, resumable sample order;
- :mod:`.validation`: E-Deflare voxel metrics of model and raw input;
- :mod:`.runlog`: ``metrics.csv`` and TensorBoard;
- :mod:`.stopping`: Ctrl-C handling;
- :mod:`.debug`: ``--debug``'s two steps and pictures;
- :mod:`.run`: :func:`train`, the entry point.
"""

from .run import train
from .trainer import Trainer, TrainResult

__all__ = ["TrainResult", "Trainer", "train"]

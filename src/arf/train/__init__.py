"""Training: one trainer for every method (names in :data:`arf.method_names.METHOD_NAMES`), DDP, exact resume.

``train(TrainConfig) -> run_dir``; see :mod:`arf.train.loop` for the run folder layout and
:mod:`arf.train.losses` for the loss definitions (:class:`ArfLoss`: the objective as one module, for a training
loop of your own).
"""

from arf.train.config import METHOD_NAMES, TrainConfig
from arf.train.loop import TrainingDiverged, train
from arf.train.losses import ArfLoss, classification_loss, contrastive_loss
from arf.train.methods import METHODS

__all__ = ["METHODS", "METHOD_NAMES", "ArfLoss", "TrainConfig", "TrainingDiverged", "classification_loss",
           "contrastive_loss", "train"]

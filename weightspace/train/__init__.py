"""Training metanetworks on zoos: configuration, tasks (:data:`TASKS`), the
training loop (single process or DDP under ``torchrun``), and INR editing
targets. The augmentations a config names are
:data:`weightspace.zoo.augmentations.AUGMENTATIONS`, built by
:func:`~weightspace.zoo.augmentations.make_augmentation` (both re-exported here)."""

from weightspace.train.config import TrainConfig, apply_overrides, load_config, save_config
from weightspace.train.distributed import resolve_device, setup_distributed, teardown_distributed
from weightspace.train.inr import EDIT_OPS, edit_images, edit_targets, refit_mse_floor, render
from weightspace.train.metrics import accuracy, kendall_tau, mean_squared_error, r_squared
from weightspace.train.tasks import TASKS, ClassificationTask, EditTask, RegressionTask, Task
from weightspace.train.trainer import (
    Trainer,
    TrainResult,
    split_rows,
    train_metanetwork,
)
from weightspace.zoo.augmentations import AUGMENTATIONS, make_augmentation

__all__ = [
    "AUGMENTATIONS",
    "EDIT_OPS",
    "TASKS",
    "ClassificationTask",
    "EditTask",
    "RegressionTask",
    "Task",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "accuracy",
    "apply_overrides",
    "edit_images",
    "edit_targets",
    "refit_mse_floor",
    "kendall_tau",
    "load_config",
    "make_augmentation",
    "mean_squared_error",
    "r_squared",
    "render",
    "resolve_device",
    "save_config",
    "setup_distributed",
    "split_rows",
    "teardown_distributed",
    "train_metanetwork",
]

"""Training tasks of a metanetwork: what it predicts, its loss and its scores.

========  =====================================================  ============
task      the metanetwork …                                      score
========  =====================================================  ============
classify  predicts a class column (cross-entropy)                accuracy
regress   predicts a number column (MSE on standardised values)  Kendall τ
edit      outputs an INR whose image matches the edited image    −MSE
========  =====================================================  ============

:data:`TASKS` holds one entry per task (``task`` of a training config); the
entry's class is built with :meth:`Task.from_config`. A new task subclasses
:class:`Task` and registers itself here; the config, the trainer and the CLI
pick it up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightspace.errors import WeightspaceError
from weightspace.graph.template import GraphTemplate
from weightspace.nn.base import as_parameters
from weightspace.registry import Entry, Registry
from weightspace.train.inr import EditTargets, edit_targets, render
from weightspace.train.metrics import accuracy, kendall_tau, mean_squared_error, r_squared

if TYPE_CHECKING:
    from weightspace.train.config import TrainConfig
    from weightspace.zoo import Zoo, ZooGraphDataset

__all__ = ["TASKS", "ClassificationTask", "EditTask", "RegressionTask", "Task", "make_task"]


class Task(ABC):
    """Loss and scores of one task. ``score_name`` names the higher-is-better
    metric used for early stopping and the best checkpoint; ``head`` the
    metanetwork head the task needs (``"invariant"``: a vector per network,
    ``"equivariant"``: a network per network)."""

    name = "task"
    score_name = "score"
    head = "invariant"

    @classmethod
    def from_config(cls, config: TrainConfig, zoo: Zoo) -> Task:
        """The task for a run of ``config`` on ``zoo`` (most tasks need neither)."""
        return cls()

    def dataset_arguments(self, config: TrainConfig) -> dict[str, Any]:
        """Keyword arguments of :class:`~weightspace.zoo.ZooGraphDataset`: the
        target column and whether it holds classes."""
        return {"target": config.target, "classification": None}

    def out_dim(self, dataset: ZooGraphDataset) -> int:
        return 1

    def prepare(self, dataset: ZooGraphDataset, device: torch.device) -> None:  # noqa: B027
        """Fit task state on the training set (target scaling …); most tasks have none."""

    def eval_targets(self, batch: Any) -> Tensor:
        """The targets of ``batch`` that :meth:`metrics` compares predictions to (on CPU)."""
        return batch.y.cpu()

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, Tensor]:
        """``(loss, predictions)``."""

    @abstractmethod
    def metrics(self, predictions: Tensor, targets: Tensor) -> dict[str, float]:
        """Scores of all predictions of a split against their targets."""


class ClassificationTask(Task):
    name = "classify"
    score_name = "accuracy"

    def dataset_arguments(self, config):
        return {"target": config.target, "classification": True}

    def out_dim(self, dataset):
        return dataset.num_classes

    def loss(self, model, batch):
        logits = model(batch)
        y = batch.y.view(-1)
        if getattr(batch, "lam", None) is not None:
            lam = batch.lam.to(logits.dtype)
            loss = (lam * F.cross_entropy(logits, y, reduction="none")
                    + (1 - lam) * F.cross_entropy(logits, batch.y_partner.view(-1), reduction="none")).mean()
        else:
            loss = F.cross_entropy(logits, y)
        return loss, logits.detach()

    def metrics(self, predictions, targets):
        loss = float(F.cross_entropy(predictions, targets.view(-1)))
        return {"loss": loss, "accuracy": accuracy(predictions, targets.view(-1))}


class RegressionTask(Task):
    name = "regress"
    score_name = "kendall_tau"

    def __init__(self) -> None:
        self.mean = 0.0
        self.std = 1.0

    def dataset_arguments(self, config):
        return {"target": config.target, "classification": False if config.target else None}

    def prepare(self, dataset, device):
        y = dataset._targets[torch.from_numpy(dataset.rows)].double()
        self.mean = float(y.mean())
        self.std = float(y.std()) if len(y) > 1 and float(y.std()) > 0 else 1.0

    def loss(self, model, batch):
        pred = model(batch)
        target = (batch.y.view(pred.shape).to(pred.dtype) - self.mean) / self.std
        if getattr(batch, "lam", None) is not None:
            lam = batch.lam.to(pred.dtype).view(-1, 1)
            partner = (batch.y_partner.view(pred.shape).to(pred.dtype) - self.mean) / self.std
            target = lam * target + (1 - lam) * partner
        return F.mse_loss(pred, target), (pred.detach() * self.std + self.mean)

    def metrics(self, predictions, targets):
        targets = targets.view(predictions.shape).to(predictions.dtype)
        return {"loss": mean_squared_error((predictions - self.mean) / self.std,
                                           (targets - self.mean) / self.std),
                "mse": mean_squared_error(predictions, targets),
                "kendall_tau": kendall_tau(predictions, targets), "r2": r_squared(predictions, targets)}


class EditTask(Task):
    """INR editing (:mod:`weightspace.train.inr`): the metanetwork outputs an
    INR whose rendered image should match the edited image."""

    name = "edit"
    score_name = "neg_mse"
    head = "equivariant"

    def __init__(self, zoo: Zoo, data: str | None, op: str, size: int) -> None:
        if len(zoo.groups) != 1:
            raise WeightspaceError(f"the edit task needs a zoo of one INR architecture; {zoo.path} "
                                   f"has groups {list(zoo.groups)}", parameter="zoo")
        for column in ("split", "image_index"):
            if column not in zoo.columns:
                raise WeightspaceError(f"the edit task needs the {column!r} column of a digits-inr "
                                       f"zoo; {zoo.path} has {zoo.columns}", parameter="zoo")
        self.zoo = zoo
        group = next(iter(zoo.groups.values()))
        self.template = GraphTemplate.for_spec(group.spec)
        self.network = group.model_def.build()
        self.targets: EditTargets = edit_targets(data, op, size)

    @classmethod
    def from_config(cls, config, zoo):
        edit = dict(config.edit or {})
        return cls(zoo, edit.pop("data", None), edit.pop("op", "dilate"), int(edit.pop("size", 3)))

    def dataset_arguments(self, config):
        return {"target": None, "classification": None}

    def images(self, rows: Tensor, device: torch.device) -> Tensor:
        rows_np = rows.cpu().numpy()
        return self.targets.lookup(self.zoo.column("split", rows_np).astype(str),
                                    self.zoo.column("image_index", rows_np)).to(device)

    def eval_targets(self, batch):
        return self.images(batch.row, torch.device("cpu")).flatten(1).float()

    def render(self, params: Tensor) -> Tensor:
        self.network = self.network.to(params.device)
        return render(self.network, self.template.spec, params,
                      self.targets.coords.to(params.device))

    def loss(self, model, batch):
        out = model(batch)
        params = as_parameters(out, self.template)
        images = self.render(params)
        target = self.images(batch.row, images.device).to(images.dtype)
        return F.mse_loss(images, target), images.detach().flatten(1)

    def metrics(self, predictions, targets):
        mse = mean_squared_error(predictions, targets)
        return {"loss": mse, "mse": mse, "neg_mse": -mse}


TASKS: Registry[Entry] = Registry("task", (
    Entry("classify", ClassificationTask, "predict a class column: cross-entropy, accuracy"),
    Entry("regress", RegressionTask,
          "predict a number column: MSE on standardised targets, Kendall tau and R²"),
    Entry("edit", EditTask, "output an INR of the edited image (e.g. dilated): MSE",
          reference="Zhou et al. 2023, Permutation Equivariant Neural Functionals, NeurIPS 2023"),
), parameter="task")
"""Training tasks by the name of :attr:`TrainConfig.task`; each entry's
target is a :class:`Task` subclass."""


def make_task(config: TrainConfig, zoo: Zoo) -> Task:
    """The :class:`Task` of ``config.task`` for a run on ``zoo``."""
    return TASKS.get(config.task).load().from_config(config, zoo)

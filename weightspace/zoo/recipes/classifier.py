"""Shared machinery of the classifier recipes (``digits-cnn``, ``digits-mlp``,
``digits-wild``): hyperparameter sampling in the style of the Small CNN Zoo
(Unterthiner et al. 2020, "Predicting Neural Network Accuracy from Weights"),
one training run per job, a checkpoint row after selected epochs.

Config sections read here (see ``datasets/digits-cnn.yaml``):

``seed``
    base seed; run ``i``'s seed and hyperparameters derive from ``(seed, i)``,
    so a smaller size's jobs are a prefix of a larger size's.
``sizes.<size>.runs``
    number of runs (jobs) of the size.
``training``
    ``epochs`` and ``checkpoint_epochs`` (epoch 0 = the initialisation).
``sampling``
    one spec per hyperparameter (see :func:`~weightspace.zoo.recipes.base.sample_value`):
    ``activation, lr, l2, dropout, optimizer, train_fraction, batch_size``,
    and ``init``: a mapping ``scheme -> [low, high]`` (log-uniform range of
    ``init_scale``) or ``scheme -> null`` (scale 1).

Training: cross-entropy, minibatches drawn without replacement in a fresh
order each epoch from a ``train_fraction`` subset of the training set
(``n_train`` images, chosen with the run's seed); ``l2`` is the optimiser's
``weight_decay`` (the gradient of ``l2/2 * |w|^2``, biases included).

Row metadata (every hyperparameter plus): ``run_id, seed, epoch, step,
train_loss, train_accuracy`` (on the ``n_train`` images used), ``test_loss,
test_accuracy`` (the whole test set, one forward pass in eval mode),
``diverged`` (a non-finite parameter).
"""

from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from weightspace.models.registry import build_model
from weightspace.zoo.errors import ZooError
from weightspace.zoo.recipes.base import (
    ImageData,
    Job,
    Recipe,
    all_finite,
    derive_seed,
    job_rng,
    load_image_data,
    sample_value,
    seeded,
    state_dict_copy,
)
from weightspace.zoo.rows import ModelDef, ZooRow

INIT_SCHEMES: tuple[str, ...] = (
    "default", "xavier_normal", "xavier_uniform", "he_normal", "he_uniform", "orthogonal",
    "normal", "truncated_normal",
)
"""Weight initialisations. ``init_scale`` is the gain of ``xavier_*`` and
``orthogonal``, a factor on the ``he_*`` weights (fan-in, ReLU gain) and the
standard deviation of ``normal`` / ``truncated_normal`` (cut at 2 std).
``default`` keeps PyTorch's initialisation (biases included); every other
scheme sets the biases to zero."""

OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "rmsprop")

TRAINING_KEYS: tuple[str, ...] = (
    "activation", "batch_size", "dropout", "l2", "lr", "optimizer", "train_fraction",
)
"""Hyperparameters every classifier recipe samples (``init`` apart)."""


def initialise(model: nn.Module, scheme: str, scale: float) -> None:
    """Re-draw the weights of every ``Conv*d`` / ``Linear`` (global torch RNG)."""
    if scheme not in INIT_SCHEMES:
        raise ZooError(f"unknown init scheme {scheme!r}; schemes: {', '.join(INIT_SCHEMES)}")
    if scheme == "default":
        return
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                continue
            w = module.weight
            if scheme == "xavier_normal":
                nn.init.xavier_normal_(w, gain=scale)
            elif scheme == "xavier_uniform":
                nn.init.xavier_uniform_(w, gain=scale)
            elif scheme == "he_normal":
                nn.init.kaiming_normal_(w, nonlinearity="relu").mul_(scale)
            elif scheme == "he_uniform":
                nn.init.kaiming_uniform_(w, nonlinearity="relu").mul_(scale)
            elif scheme == "orthogonal":
                nn.init.orthogonal_(w, gain=scale)
            elif scheme == "normal":
                nn.init.normal_(w, 0.0, scale)
            elif scheme == "truncated_normal":
                nn.init.trunc_normal_(w, 0.0, scale, -2.0 * scale, 2.0 * scale)
            if module.bias is not None:
                module.bias.zero_()


def make_optimizer(name: str, params, lr: float, l2: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=l2)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=l2)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=l2)
    raise ZooError(f"unknown optimizer {name!r}; optimizers: {', '.join(OPTIMIZERS)}")


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` (eval mode, one batch)."""
    was_training = model.training
    model.eval()
    logits = model(x)
    model.train(was_training)
    loss = float(nn.functional.cross_entropy(logits, y))
    accuracy = float((logits.argmax(1) == y).sum()) / len(y)
    return loss, accuracy


class ClassifierRecipe(Recipe):
    """A classifier zoo: one training run per job, rows at checkpoint epochs.

    Subclasses define the architecture: :meth:`sample_architecture` (extra
    job config, e.g. depth), :meth:`model_def` and :meth:`group`; and how the
    images are fed (:meth:`inputs`).
    """

    family: str = ""

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        training = self.section("training")
        self.epochs = int(training.get("epochs", 8))
        self.checkpoint_epochs = sorted({int(e) for e in training.get(
            "checkpoint_epochs", range(self.epochs + 1))})
        if self.epochs < 0 or not self.checkpoint_epochs or not all(
                0 <= e <= self.epochs for e in self.checkpoint_epochs):
            raise ZooError(f"recipe {self.name!r}: training.checkpoint_epochs must be epochs "
                           f"in 0..{self.epochs}, got {self.checkpoint_epochs}")
        self.sampling = dict(self.section("sampling"))
        missing = [k for k in (*TRAINING_KEYS, "init") if k not in self.sampling]
        if missing:
            raise ZooError(f"recipe {self.name!r}: sampling lacks {', '.join(missing)}")
        init = self.sampling["init"]
        if not isinstance(init, Mapping) or not init:
            raise ZooError(f"recipe {self.name!r}: sampling.init must map init schemes to "
                           f"[low, high] (log-uniform init_scale) or null")
        unknown = [s for s in init if s not in INIT_SCHEMES]
        if unknown:
            raise ZooError(f"recipe {self.name!r}: unknown init scheme(s) {unknown}; schemes: "
                           f"{', '.join(INIT_SCHEMES)}")

    # -------------------------------------------------------------- jobs
    def jobs(self, size: str) -> list[Job]:
        runs = int(self.size_config(size).get("runs", 0))
        return [self._job(i) for i in range(runs)]

    def _job(self, index: int) -> Job:
        rng = job_rng(self.seed, index)
        config: dict[str, Any] = {"seed": derive_seed(self.seed, index)}
        for key in TRAINING_KEYS:
            config[key] = sample_value(key, self.sampling[key], rng)
        schemes = sorted(self.sampling["init"])  # YAML key order must not matter
        scheme = schemes[int(rng.integers(len(schemes)))]
        scale_range = self.sampling["init"][scheme]
        config["init"] = scheme
        config["init_scale"] = (1.0 if scale_range is None else
                                sample_value("init_scale", {"log_uniform": scale_range}, rng))
        config.update(self.sample_architecture(rng))
        config["epochs"] = self.epochs
        config["checkpoint_epochs"] = list(self.checkpoint_epochs)
        return Job(self.name, index, f"run{index:05d}", config)

    def sample_architecture(self, rng: np.random.Generator) -> dict[str, Any]:
        """Extra per-run architecture choices (beyond ``activation``)."""
        return {}

    # -------------------------------------------------------------- data
    def load_data(self, data: str | os.PathLike | None) -> ImageData:
        return load_image_data(data)

    def inputs(self, data: ImageData) -> tuple[Tensor, Tensor]:
        """``(x_train, x_test)`` as the model takes them."""
        return data.split.x_train, data.split.x_test

    # ------------------------------------------------------------ models
    @abstractmethod
    def model_def(self, job_config: Mapping[str, Any], data: ImageData) -> ModelDef:
        """The run's model definition (constructor arguments only, no dropout)."""

    @abstractmethod
    def group(self, job_config: Mapping[str, Any], data: ImageData) -> str:
        """The zoo group (architecture) of the run's rows."""

    def architecture_metadata(self, job_config: Mapping[str, Any],
                              model_def: ModelDef) -> dict[str, Any]:
        """Architecture columns recorded on every row (beyond ``activation``)."""
        return {}

    def build(self, model_def: ModelDef, dropout: float) -> nn.Module:
        """The trainable module: the model definition plus the dropout rate
        (dropout changes no parameter, so it is not part of the definition)."""
        return build_model(model_def.family, **dict(model_def.args), dropout=float(dropout))

    # --------------------------------------------------------------- run
    def run(self, job: Job, data: ImageData) -> list[ZooRow]:
        cfg = job.config
        seed = int(cfg["seed"])
        model_def = self.model_def(cfg, data)
        group = self.group(cfg, data)
        x_train, x_test = self.inputs(data)
        y_train, y_test = data.split.y_train, data.split.y_test
        epochs = int(cfg["epochs"])
        checkpoints = {int(e) for e in cfg["checkpoint_epochs"]}
        batch_size = int(cfg["batch_size"])

        with seeded(seed):
            generator = torch.Generator().manual_seed(seed)
            n_train = max(1, round(float(cfg["train_fraction"]) * len(y_train)))
            subset = torch.randperm(len(y_train), generator=generator)[:n_train].sort().values
            xs, ys = x_train[subset], y_train[subset]

            model = self.build(model_def, cfg["dropout"])
            initialise(model, str(cfg["init"]), float(cfg["init_scale"]))
            optimizer = make_optimizer(str(cfg["optimizer"]), model.parameters(),
                                       float(cfg["lr"]), float(cfg["l2"]))
            common = {
                "run_id": job.key,
                "seed": seed,
                "activation": str(cfg["activation"]),
                "init": str(cfg["init"]),
                "init_scale": float(cfg["init_scale"]),
                "lr": float(cfg["lr"]),
                "l2": float(cfg["l2"]),
                "dropout": float(cfg["dropout"]),
                "optimizer": str(cfg["optimizer"]),
                "batch_size": batch_size,
                "train_fraction": float(cfg["train_fraction"]),
                "n_train": int(n_train),
                "epochs": epochs,
                **self.architecture_metadata(cfg, model_def),
            }
            rows: list[ZooRow] = []
            step = 0

            def checkpoint(epoch: int) -> None:
                state = state_dict_copy(model)
                train_loss, train_acc = evaluate(model, xs, ys)
                test_loss, test_acc = evaluate(model, x_test, y_test)
                rows.append(ZooRow(
                    key=f"{job.key}/epoch{epoch:03d}",
                    group=group,
                    model=model_def,
                    params=state,
                    metadata={**common, "epoch": epoch, "step": step,
                              "train_loss": train_loss, "train_accuracy": train_acc,
                              "test_loss": test_loss, "test_accuracy": test_acc,
                              "diverged": not all_finite(state)},
                ))

            if 0 in checkpoints:
                checkpoint(0)
            model.train()
            for epoch in range(1, epochs + 1):
                order = torch.randperm(n_train, generator=generator)
                for start in range(0, n_train, batch_size):
                    idx = order[start:start + batch_size]
                    loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                if epoch in checkpoints:
                    checkpoint(epoch)
        return rows

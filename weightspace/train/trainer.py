"""Train a metanetwork on a zoo: classification, regression of any column,
or INR editing; early stopping, checkpoints with resume, CSV/JSON logs, DDP.

Example::

    from weightspace.train import load_config, train_metanetwork

    config = load_config(zoo="digits-inr.h5", model="gmn", task="classify",
                         target="label", epochs=10, out="runs/gmn")
    result = train_metanetwork(config)
    result.test["accuracy"], result.graphs_per_second

Outputs in ``config.out``: ``config.yaml`` (the settings), ``log.csv`` (one
row per epoch), ``checkpoint.pt`` (the last epoch: model, optimiser,
scheduler; the shuffling and augmentation of an epoch depend only on the seed
and the epoch, so ``resume=True`` continues exactly), ``best.pt`` (the
weights of the best validation epoch) and ``metrics.json`` (the final test
scores of the best weights). Every file is written atomically, so a killed
run leaves the previous complete version.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from weightspace.errors import WeightspaceError
from weightspace.io import atomic_output_path, atomic_write
from weightspace.nn.registry import (
    METANETWORKS,
    build_metanetwork,
    count_trainable_parameters,
    is_graph_model,
)
from weightspace.train.config import TrainConfig, save_config
from weightspace.train.distributed import Distributed, setup_distributed, teardown_distributed
from weightspace.train.schedule import warmup_cosine_scheduler
from weightspace.train.tasks import make_task
from weightspace.zoo import Zoo, ZooGraphDataset, split_by_run
from weightspace.zoo.augmentations import make_augmentation
from weightspace.zoo.mixup import WeightMixup

logger = logging.getLogger(__name__)

def make_mixup(spec: dict[str, Any] | None) -> WeightMixup | None:
    if not spec:
        return None
    spec = dict(spec)
    aligner = None
    if spec.pop("align", False):
        from weightspace.align import align_rows

        aligner = align_rows
    return WeightMixup(align=aligner, **spec)


def split_rows(zoo: Zoo, config: TrainConfig) -> dict[str, np.ndarray]:
    """Train / val / test rows (finite weights only).

    ``split="run"`` deals whole runs to the parts by ``split_fractions``. A
    zoo with too few runs for that (digits-inr "tiny": a handful of runs of
    many images each) would leave a part empty; where the zoo carries its own
    ``split`` column of train / test rows, that split is used instead and a
    warning says so. Otherwise an empty part is an error naming the fix.

    Raises:
        WeightspaceError: (``parameter="split"``) an unknown split column, or
            a part that comes out empty.
    """
    rows = zoo.select()
    parts = _split_by(zoo, rows, config.split, config)
    empty = [name for name in ("train", "val", "test") if len(parts.get(name, ())) == 0]
    if empty and config.split == "run" and _has_own_split(zoo, rows):
        fallback = _split_by(zoo, rows, ZOO_SPLIT_COLUMN, config)
        if all(len(fallback[name]) for name in ("train", "val", "test")):
            logger.warning("split='run' leaves the %s part of %s empty (%d runs for "
                           "split_fractions %s); using the zoo's own %r column instead "
                           "(train rows; test rows halved into val and test)",
                           " and ".join(repr(e) for e in empty), zoo.path,
                           _count_runs(zoo, rows), config.split_fractions, ZOO_SPLIT_COLUMN)
            parts, empty = fallback, []
    if empty:
        own = (f"split={ZOO_SPLIT_COLUMN!r} (the zoo's own train/test rows), "
               if _has_own_split(zoo, rows) else "")
        raise WeightspaceError(
            f"the {empty[0]!r} split of {zoo.path} is empty (split={config.split!r}, "
            f"split_fractions {config.split_fractions}, {len(rows)} usable rows in "
            f"{_count_runs(zoo, rows)} runs); use {own}larger split_fractions for "
            f"{empty[0]!r}, or build a larger zoo", parameter="split")
    if config.max_train_rows:
        parts["train"] = parts["train"][: config.max_train_rows]
    return parts


#: The column of train / test rows a zoo recipe (digits-inr) writes.
ZOO_SPLIT_COLUMN = "split"


def _split_by(zoo: Zoo, rows: np.ndarray, split: str, config: TrainConfig
              ) -> dict[str, np.ndarray]:
    if split == "run":
        return split_by_run(zoo, rows, config.split_fractions, seed=config.seed)
    if split not in zoo.columns:
        raise WeightspaceError(f"split={split!r}: {zoo.path} has no such column; "
                               f"use 'run' or one of {zoo.columns}", parameter="split")
    values = zoo.column(split, rows).astype(str)
    parts = {name: rows[values == name] for name in ("train", "val", "test")}
    if len(parts["val"]) == 0:
        # e.g. digits-inr: train/test images; divide the test images into val and test,
        # every view of an image on one side
        unit = "image_index" if "image_index" in zoo.columns else "run_id"
        halves = split_by_run(zoo, parts["test"], {"val": 0.5, "test": 0.5}, seed=config.seed,
                              run_column=unit)
        parts["val"], parts["test"] = halves["val"], halves["test"]
    return parts


def _has_own_split(zoo: Zoo, rows: np.ndarray) -> bool:
    if ZOO_SPLIT_COLUMN not in zoo.columns:
        return False
    values = set(zoo.column(ZOO_SPLIT_COLUMN, rows).astype(str).tolist())
    return {"train", "test"} <= values


def _count_runs(zoo: Zoo, rows: np.ndarray) -> int:
    if "run_id" not in zoo.columns:
        return len(rows)
    return len(set(zip(zoo.column("group", rows).astype(str).tolist(),
                       zoo.column("run_id", rows).astype(str).tolist(), strict=True)))


# ----------------------------------------------------------------- results
@dataclass
class TrainResult:
    """What :func:`train_metanetwork` measured.

    Attributes:
        test / val: scores of the best-validation weights.
        history: one dict per epoch (train loss, val scores, seconds, lr).
        graphs_per_second: training throughput (forward, backward, step and
            batch building; all processes together under DDP).
    """

    config: TrainConfig
    num_parameters: int
    best_epoch: int
    val: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    graphs_per_second: float = float("nan")
    train_seconds: float = 0.0
    wall_seconds: float = 0.0
    num_rows: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.config.model, "task": self.config.task, "target": self.config.target,
                "seed": self.config.seed, "num_parameters": self.num_parameters,
                "best_epoch": self.best_epoch, "val": self.val, "test": self.test,
                "graphs_per_second": self.graphs_per_second, "train_seconds": self.train_seconds,
                "wall_seconds": self.wall_seconds, "num_rows": self.num_rows,
                "epochs_run": len(self.history), "config": self.config.to_dict()}


# ----------------------------------------------------------------- trainer
class Trainer:
    """One training run; :meth:`fit` does it all. See the module docstring."""

    def __init__(self, config: TrainConfig) -> None:
        # A misspelt metanetwork is reported before anything about the zoo.
        METANETWORKS.get(config.model, parameter="model")
        self.config = config
        self.start = time.perf_counter()
        self.dist: Distributed = setup_distributed(config.device)
        self.device = self.dist.device
        torch.manual_seed(config.seed)
        self.zoo = Zoo(config.zoo)
        self.task = make_task(config, self.zoo)
        self.parts = split_rows(self.zoo, config)
        common = self.task.dataset_arguments(config)
        self.train_set = ZooGraphDataset(self.zoo, self.parts["train"], seed=config.seed + 1000 * self.dist.rank,
                                         weight_transform=make_augmentation(config.augment),
                                         mixup=make_mixup(config.mixup), **common)
        self.val_set = ZooGraphDataset(self.zoo, self.parts["val"], **common)
        self.test_set = ZooGraphDataset(self.zoo, self.parts["test"], **common)
        templates = self.train_set.templates
        groups = sorted(set(self.zoo.column("group", self.parts["train"]).tolist()))
        if not is_graph_model(config.model):
            # flat models need one parameter layout; groups that differ only in
            # their activations (digits-cnn, the Small CNN Zoo) share it
            layouts = {tuple((p.name, p.shape) for p in g.spec.parameters) for g in self.zoo.groups.values()}
            if len(layouts) > 1:
                graph_models = [n for n, e in METANETWORKS.items() if e.input == "graph"]
                raise WeightspaceError(f"{config.model!r} works on one parameter layout, but the groups of "
                                       f"{self.zoo.path} ({list(self.zoo.groups)}) have different ones; use a "
                                       f"graph metanetwork ({', '.join(graph_models)})", parameter="model")
        self.template = templates[groups[0]]
        self.task.prepare(self.train_set, self.device)
        model_args = dict(config.model_args)
        if self.task.head != "invariant":
            model_args.setdefault("head", self.task.head)
        if model_args.get("probes") and "network" not in model_args:
            # probe features run the input networks themselves
            model_args["network"] = self.zoo.group(groups[0]).model_def.build()
        self.model = build_metanetwork(config.model, self.template, self.task.out_dim(self.train_set),
                                       model_args).to(self.device)
        fit = getattr(self.model, "fit_normalisation", None)
        if fit is not None:
            sample = self.train_set.batch(np.arange(min(len(self.train_set), 512))).to(self.device)
            fit(sample)
        self.num_parameters = count_trainable_parameters(self.model)
        self.net: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay)
        self.steps_per_epoch = max(1, (len(self.train_set) // self.dist.world_size) // config.batch_size)
        total = self.steps_per_epoch * config.epochs
        warmup = min(config.warmup_steps, max(total // 10, 1))
        self.scheduler = warmup_cosine_scheduler(self.optimizer, warmup, total)
        self.out = Path(config.out)
        self.history: list[dict[str, float]] = []
        self.best_score = -math.inf
        self.best_epoch = -1
        self.epoch = 0
        self.train_graphs = 0
        self.train_seconds = 0.0

    # ----------------------------------------------------------- batching
    def _train_batches(self, epoch: int) -> Iterator[Any]:
        # augmentation randomness is a function of (seed, rank, epoch), so a
        # resumed run draws exactly what the uninterrupted one would have
        self.train_set.reseed(self.config.seed * 100_003 + 1000 * self.dist.rank + epoch)
        rng = np.random.default_rng(self.config.seed * 100_003 + epoch)
        order = rng.permutation(len(self.train_set))
        per_rank = len(order) // self.dist.world_size
        mine = order[self.dist.rank * per_rank: (self.dist.rank + 1) * per_rank]
        size = self.config.batch_size
        for start in range(0, len(mine) - size + 1 if len(mine) >= size else 1, size):
            yield self.train_set.batch(mine[start: start + size])

    @torch.no_grad()
    def evaluate(self, dataset: ZooGraphDataset) -> dict[str, float]:
        """Scores of the current weights on ``dataset`` (every process
        evaluates all of it, so early-stopping decisions agree)."""
        self.model.eval()
        predictions, targets = [], []
        for start in range(0, len(dataset), self.config.eval_batch_size):
            batch = dataset.batch(np.arange(start, min(len(dataset), start + self.config.eval_batch_size)))
            batch = batch.to(self.device)
            _, pred = self.task.loss(self.model, batch)
            predictions.append(pred.float().cpu())
            targets.append(self.task.eval_targets(batch))
        return self.task.metrics(torch.cat(predictions), torch.cat(targets))

    # -------------------------------------------------------- checkpoints
    def _save(self, name: str, payload: dict[str, Any]) -> None:
        with atomic_output_path(self.out / name) as tmp:
            torch.save(payload, tmp)

    def _checkpoint(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                "best_score": self.best_score, "best_epoch": self.best_epoch,
                "history": self.history, "train_graphs": self.train_graphs,
                "train_seconds": self.train_seconds, "config": self.config.to_dict()}

    def _resume(self) -> None:
        path = self.out / "checkpoint.pt"
        if not (self.config.resume and path.exists()):
            return
        # weights_only: a checkpoint is data, never code
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state.get("config", {}).get("model") != self.config.model:
            raise WeightspaceError(f"{path} is a checkpoint of model {state.get('config', {}).get('model')!r}, "
                                   f"not {self.config.model!r}; use another out directory", parameter="out")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch = int(state["epoch"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.history = list(state["history"])
        self.train_graphs = int(state["train_graphs"])
        self.train_seconds = float(state["train_seconds"])
        logger.info("resumed %s at epoch %d", path, self.epoch)

    def _write_log(self) -> None:
        keys: list[str] = []
        for row in self.history:
            keys.extend(k for k in row if k not in keys)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.history)
        with atomic_write(self.out / "log.csv", "w") as handle:
            handle.write(text.getvalue())

    # ---------------------------------------------------------------- fit
    def fit(self) -> TrainResult:
        config = self.config
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(config, self.out / "config.yaml")
        self._resume()
        show = config.progress and self.dist.is_main
        epochs = tqdm(range(self.epoch, config.epochs), desc=f"{config.model} epochs", disable=not show,
                      initial=self.epoch, total=config.epochs)
        stale = 0 if self.best_epoch < 0 else self.epoch - 1 - self.best_epoch
        for epoch in epochs:
            self.model.train()
            started = time.perf_counter()
            total_loss, count = 0.0, 0
            for batch in tqdm(self._train_batches(epoch), total=self.steps_per_epoch, leave=False,
                              desc=f"epoch {epoch + 1}", disable=not show):
                batch = batch.to(self.device)
                loss, _ = self.task.loss(self.net, batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                total_loss += float(loss.detach()) * batch.num_graphs
                count += batch.num_graphs
            seconds = time.perf_counter() - started
            total_loss, count = self.dist.all_reduce_sum([total_loss, float(count)])
            self.train_graphs += int(count)
            self.train_seconds += seconds
            val = self.evaluate(self.val_set)
            self.epoch = epoch + 1
            row = {"epoch": self.epoch, "train_loss": total_loss / max(count, 1), "seconds": seconds,
                   "lr": self.scheduler.get_last_lr()[0], **{f"val_{k}": v for k, v in val.items()}}
            self.history.append(row)
            score = val[self.task.score_name]
            improved = score > self.best_score or self.best_epoch < 0
            if improved:
                self.best_score, self.best_epoch, stale = score, self.epoch, 0
            else:
                stale += 1
            if self.dist.is_main:
                if improved:
                    self._save("best.pt", {"model": self.model.state_dict(), "epoch": self.epoch})
                self._save("checkpoint.pt", self._checkpoint())
                self._write_log()
            epochs.set_postfix(loss=f"{row['train_loss']:.4f}", val=f"{score:.4f}")
            logger.info("epoch %d: train loss %.4f, val %s %.4f", self.epoch, row["train_loss"],
                        self.task.score_name, score)
            if config.patience and stale >= config.patience:
                logger.info("no better validation %s for %d epochs; stopping", self.task.score_name, stale)
                break
        self.dist.barrier()
        best = self.out / "best.pt"
        if best.exists():
            self.model.load_state_dict(torch.load(best, map_location=self.device, weights_only=True)["model"])
        val = self.evaluate(self.val_set)
        test = self.evaluate(self.test_set)
        result = TrainResult(
            config=config, num_parameters=self.num_parameters, best_epoch=self.best_epoch, val=val,
            test=test, history=self.history,
            graphs_per_second=self.train_graphs / self.train_seconds if self.train_seconds else float("nan"),
            train_seconds=self.train_seconds, wall_seconds=time.perf_counter() - self.start,
            num_rows={k: len(v) for k, v in self.parts.items()})
        if self.dist.is_main:
            with atomic_write(self.out / "metrics.json", "w") as handle:
                json.dump(result.to_dict(), handle, indent=2, default=float)
        return result


def train_metanetwork(config: TrainConfig) -> TrainResult:
    """Train ``config.model`` on ``config.zoo`` (see the module docstring)."""
    trainer = Trainer(config)
    try:
        return trainer.fit()
    finally:
        trainer.zoo.close()
        teardown_distributed()


__all__ = ["TrainResult", "Trainer", "split_rows", "train_metanetwork"]

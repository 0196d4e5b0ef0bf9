"""Tiny zoos written in the published layouts, with reference implementations
of the original architectures (written from the papers' code, with their
parameter names), for the importer tests."""

from __future__ import annotations

import csv
import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ======================================================== Small CNN Zoo (TF)
KERAS_LAYERS = ("conv2d", "conv2d_1", "conv2d_2", "dense")

SMALL_CNN_CONFIG = {
    "config.b_init": "zeros",
    "config.dnn_architecture": "cnn",
    "config.epochs": 86,
    "config.epochs_between_checkpoints": 20,
    "config.num_layers": 3,
    "config.num_units": 16,
    "config.random_seed": 42,
}


def keras_variables(rng: np.random.Generator, in_channels: int = 1, units: int = 16,
                    classes: int = 10) -> dict[str, np.ndarray]:
    """The variables of the zoo's Keras model, in TensorFlow layout."""
    out = {}
    width = in_channels
    for name in KERAS_LAYERS[:-1]:
        out[f"sequential/{name}/kernel:0"] = rng.normal(0, 0.4, (3, 3, width, units))
        out[f"sequential/{name}/bias:0"] = rng.normal(0, 0.1, (units,))
        width = units
    out["sequential/dense/kernel:0"] = rng.normal(0, 0.4, (width, classes))
    out["sequential/dense/bias:0"] = rng.normal(0, 0.1, (classes,))
    return {k: v.astype(np.float32) for k, v in out.items()}


def tf_cnn_forward(x_nhwc: np.ndarray, variables: dict[str, np.ndarray], activation: str,
                   stride: int = 2) -> np.ndarray:
    """The Keras model's forward in NHWC, float64: Conv2D(padding="valid"),
    GlobalAveragePooling2D, Dense."""
    act = {"relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh}[activation]
    x = x_nhwc.astype(np.float64)
    for name in KERAS_LAYERS[:-1]:
        kernel = variables[f"sequential/{name}/kernel:0"].astype(np.float64)
        bias = variables[f"sequential/{name}/bias:0"].astype(np.float64)
        kh, kw = kernel.shape[:2]
        windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
        windows = windows[:, ::stride, ::stride]  # "valid": no padding
        x = act(np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias)
    x = x.mean(axis=(1, 2))
    return x @ variables["sequential/dense/kernel:0"] + variables["sequential/dense/bias:0"]


@dataclass
class SmallCNNZoo:
    folder: Path
    rows: list[dict[str, Any]] = field(default_factory=list)  # metrics rows, in order
    variables: list[dict[str, np.ndarray]] = field(default_factory=list)  # per row


def write_small_cnn_zoo(folder: Path, runs: list[tuple[str, str]], steps=(0, 20, 86),
                        dataset: str = "mnist", seed: int = 0) -> SmallCNNZoo:
    """``runs``: (modeldir, activation). Layout rows sorted by variable name
    (bias before kernel, as in the released layout.csv), pandas-style index
    columns in both CSV files."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    zoo = SmallCNNZoo(folder)
    names = sorted(keras_variables(rng))
    for r, (modeldir, activation) in enumerate(runs):
        for step in steps:
            variables = keras_variables(rng)
            zoo.variables.append(variables)
            row = {**SMALL_CNN_CONFIG,
                   "config.activation": activation,
                   "config.dataset": dataset,
                   "config.dropout": [0.0, 0.05][r % 2],
                   "config.init_std": 0.05,
                   "config.l2reg": [0.0, 1e-05][r % 2],
                   "config.learning_rate": [0.01, 0.0005][r % 2],
                   "config.optimizer": ["sgd", "adam"][r % 2],
                   "config.train_fraction": [1.0, 0.5][r % 2],
                   "config.w_init": ["he_normal", "glorot_uniform"][r % 2],
                   "modeldir": modeldir,
                   "step": step,
                   "test_accuracy": float(rng.uniform()),
                   "test_loss": float(rng.uniform(0, 3)),
                   "train_accuracy": float(rng.uniform()),
                   "train_loss": float(rng.uniform(0, 3))}
            zoo.rows.append(row)
    flat = [np.concatenate([v[n].reshape(-1) for n in names]) for v in zoo.variables]
    np.save(folder / "weights.npy", np.stack(flat).astype(np.float32))
    write_layout(folder / "layout.csv", zoo.variables[0], names)
    write_metrics(folder / "metrics.csv.gz", zoo.rows)
    return zoo


def write_layout(path: Path, variables: dict[str, np.ndarray], names: list[str],
                 shift: int = 0) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["", "varname", "start_idx", "end_idx", "shape"])
        start = 0
        for i, name in enumerate(names):
            shape = variables[name].shape
            size = int(np.prod(shape))
            writer.writerow([i, name, start, start + size + (shift if i == len(names) - 1 else 0),
                             str(tuple(shape))])
            start += size


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    text = io.StringIO()
    columns = sorted(rows[0])
    writer = csv.writer(text)
    writer.writerow(["", *columns])
    for i, row in enumerate(rows):
        writer.writerow([i, *(row[c] for c in columns)])
    with gzip.open(path, "wt", newline="") as handle:
        handle.write(text.getvalue())


# ============================================================ INRs (DWSNets)
class DWSNetsSine(nn.Module):
    def __init__(self, w0: float = 1.0) -> None:
        super().__init__()
        self.w0 = w0

    def forward(self, x):
        return torch.sin(self.w0 * x)


class DWSNetsSiren(nn.Module):
    """DWSNets' ``nn/inr.py`` ``Siren`` layer: own weight/bias, sin(w0 (Wx + b))."""

    def __init__(self, dim_in: int, dim_out: int, w0: float = 30.0, is_first: bool = False):
        super().__init__()
        bound = (1 / dim_in) if is_first else (6 / dim_in) ** 0.5 / w0
        self.weight = nn.Parameter(torch.empty(dim_out, dim_in).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(dim_out).uniform_(-0.5, 0.5))
        self.activation = DWSNetsSine(w0)

    def forward(self, x):
        return self.activation(F.linear(x, self.weight, self.bias))


class DWSNetsINR(nn.Module):
    """DWSNets' ``INR``: ``seq`` of Siren layers and a Linear, output + 0.5."""

    def __init__(self, in_dim: int = 2, n_layers: int = 3, hidden: int = 16, out: int = 1):
        super().__init__()
        layers = [DWSNetsSiren(in_dim, hidden, is_first=True)]
        layers += [DWSNetsSiren(hidden, hidden) for _ in range(n_layers - 2)]
        layers.append(nn.Linear(hidden, out))
        self.seq = nn.Sequential(*layers)

    def forward(self, x):
        return self.seq(x) + 0.5


class ReferenceSineLayer(nn.Module):
    """Sitzmann et al.'s ``SineLayer`` (also NFN's): ``net.<i>.linear``."""

    def __init__(self, dim_in: int, dim_out: int, omega_0: float = 30.0):
        super().__init__()
        self.omega_0 = omega_0
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        return torch.sin(self.omega_0 * self.linear(x))


class ReferenceSiren(nn.Module):
    def __init__(self, hidden: int = 16, hidden_layers: int = 1):
        super().__init__()
        layers = [ReferenceSineLayer(2, hidden)]
        layers += [ReferenceSineLayer(hidden, hidden) for _ in range(hidden_layers)]
        layers.append(nn.Linear(hidden, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, coords):
        return self.net(coords)


def write_dwsnets_inrs(root: Path, seed: int = 0) -> dict[str, tuple[str, int, nn.Module]]:
    """MNIST INRs as DWSNets lays them out, with a splits JSON of absolute
    paths from the machine that made it. Returns key -> (split, label, INR)."""
    torch.manual_seed(seed)
    made = {}
    table: dict[str, dict[str, list]] = {}
    items = [("train", 3, 11), ("train", 7, 12), ("train", 3, 13), ("val", 1, 14),
             ("test", 0, 15), ("test", 9, 16)]
    for split, label, image in items:
        kind = "training" if split in ("train", "val") else "testing"
        relative = f"mnist-inrs/mnist_png_{kind}_{label}_{image}/checkpoints/model_final.pth"
        file = root / relative
        file.parent.mkdir(parents=True, exist_ok=True)
        inr = DWSNetsINR()
        torch.save(inr.state_dict(), file)
        entry = table.setdefault(split, {"path": [], "label": []})
        entry["path"].append(f"/home/someone/dwsnets/experiments/mnist/dataset/{relative}")
        entry["label"].append(str(label))
        made[relative] = (split, label, inr)
    with open(root / "mnist_splits.json", "w") as handle:
        json.dump(table, handle)
    return made


def write_relative_inrs(root: Path, seed: int = 1) -> dict[str, tuple[str, int, nn.Module]]:
    """Fashion-MNIST INRs as Neural Graphs lays them out: flat split folders,
    paths relative to the data set folder, a label stored in each file."""
    torch.manual_seed(seed)
    made = {}
    table: dict[str, dict[str, list]] = {}
    for split, label, index in [("train", 4, 20), ("train", 5, 21), ("test", 6, 22)]:
        relative = f"fmnist_inrs/{split}/model_{index}.pth"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        inr = DWSNetsINR()
        torch.save({**inr.state_dict(), "label": label}, root / relative)
        entry = table.setdefault(split, {"path": [], "label": []})
        entry["path"].append(relative)
        entry["label"].append(label)
        made[relative] = (split, label, inr)
    with open(root / "fmnist_splits.json", "w") as handle:
        json.dump(table, handle)
    return made


# ========================================================== CNN Wild Park
PARK_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh,
                    "sigmoid": torch.sigmoid, "leaky_relu": F.leaky_relu,
                    "none": lambda x: x}


class ParkReference(nn.Module):
    """Neural Graphs' ``cnn_sampler.CNN`` as written there: in-place partial
    residuals on the first min(c_res, c_out) channels."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(
            nn.Conv2d(cfg["channels"][i], cfg["channels"][i + 1], cfg["kernel_size"][i],
                      padding=cfg["padding"][i], stride=cfg["stride"][i])
            for i in range(cfg["n_layers"]))
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cfg["channels"][-1], cfg["n_classes"])

    def forward(self, x):
        residuals = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.cfg["residual"][i] > -1:
                ch = min(self.cfg["channels"][self.cfg["residual"][i] + 1],
                         self.cfg["channels"][i + 1])
                x = x.clone()
                x[:, :ch] += residuals[self.cfg["residual"][i]][:, :ch]
            x = PARK_ACTIVATIONS[self.cfg["activation"][i]](x)
            if i in self.cfg["residual"]:
                residuals[i] = x
        return self.fc(self.flatten(self.global_pool(x)))


def park_config(channels, kernels, residual, activation) -> dict[str, Any]:
    return {"n_layers": len(kernels), "n_classes": 10, "channels": list(channels),
            "kernel_size": list(kernels), "stride": [1] * len(kernels),
            "padding": [k // 2 for k in kernels], "residual": list(residual),
            "activation": list(activation)}


PARK_CONFIGS = {
    # residual 0 -> 2 embeds 8 channels into 16
    "A": park_config([3, 8, 8, 16], [3, 5, 7], [-1, -1, 0], ["relu", "none", "leaky_relu"]),
    # residual 0 -> 2 truncates 16 channels to 8
    "B": park_config([3, 16, 4, 8], [3, 3, 5], [-1, -1, 0], ["tanh", "gelu", "sigmoid"]),
    # a full residual 0 -> 2 (8 = 8) and a partial one 1 -> 3 (16 -> 4)
    "C": park_config([3, 8, 16, 8, 4], [7, 3, 3, 5], [-1, -1, 0, 1],
                     ["relu", "tanh", "gelu", "none"]),
}


def park_checkpoint(model: nn.Module, cfg: dict[str, Any], iteration: int,
                    rng: np.random.Generator) -> dict[str, Any]:
    """What the zoo's Ray trainable saves (save_checkpoint + get_state)."""
    acc, loss = float(rng.uniform()), float(rng.uniform(0, 3))
    return {"model": model.state_dict(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.001, "weight_decay": 0.0,
                                                         "params": list(range(8))}]},
            "config": cfg, "experiment_id": "4f1e2d", "iteration": iteration,
            "timesteps_total": None, "time_total": 12.5, "episodes_total": None,
            "last_result": {"test/acc": acc, "test/loss": loss,
                            "training_iteration": iteration, "done": False},
            "ray_version": "2.7.1"}


def write_cnn_wild_park(root: Path, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Runs of configs A, A, B, C with 2, 1, 1, 2 checkpoints. Returns
    checkpoint-folder key -> {"run", "config", "module", "checkpoint"}."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    made = {}
    for run, (name, iterations) in enumerate([("A", (10, 20)), ("A", (10,)), ("B", (30,)),
                                              ("C", (10, 20))]):
        cfg = PARK_CONFIGS[name]
        run_dir = f"cifar10_zooV2/NN_tune_trainable_{run:05d}_{run}_model={name}"
        for iteration in iterations:
            module = ParkReference(cfg)
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(0.1 * torch.randn_like(p))
            checkpoint = park_checkpoint(module, cfg, iteration, rng)
            key = f"{run_dir}/checkpoint_{iteration:06d}"
            (root / key).mkdir(parents=True)
            torch.save(checkpoint, root / key / "checkpoint.pt")
            made[key] = {"run": run_dir, "config": cfg, "module": module,
                         "checkpoint": checkpoint}
    return made


# ============================================================== Model Zoos
def zoo_nonlinearity(nlin: str) -> nn.Module:
    return {"leakyrelu": nn.LeakyReLU, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
            "silu": nn.SiLU, "gelu": nn.GELU}[nlin]()


class ModelZooReference(nn.Module):
    """Model Zoos' ``def_net.CNN`` (28x28) and ``CNN3`` (32x32) as written
    there: Dropout modules only when dropout > 0 (always for CNN3)."""

    def __init__(self, variant: str, channels_in: int, nlin: str, dropout: float):
        super().__init__()
        self.module_list = nn.ModuleList()
        add = self.module_list.extend

        def drop() -> list[nn.Module]:
            return [nn.Dropout(dropout)] if dropout > 0 or variant == "CNN3" else []

        if variant == "CNN":
            add([nn.Conv2d(channels_in, 8, 5), nn.MaxPool2d(2, 2), zoo_nonlinearity(nlin), *drop()])
            add([nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), zoo_nonlinearity(nlin), *drop()])
            add([nn.Conv2d(6, 4, 2), zoo_nonlinearity(nlin), nn.Flatten()])
            add([nn.Linear(3 * 3 * 4, 20), zoo_nonlinearity(nlin), *drop(), nn.Linear(20, 10)])
        else:  # CNN3
            width = channels_in
            for c in (16, 32, 15):
                add([nn.Conv2d(width, c, 3), nn.MaxPool2d(2, 2), zoo_nonlinearity(nlin), *drop()])
                width = c
            add([nn.Flatten(), nn.Linear(15 * 2 * 2, 20), zoo_nonlinearity(nlin), *drop(),
                 nn.Linear(20, 10)])
        for m in self.module_list:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.uniform_(m.weight, -0.5, 0.5)
                m.bias.data.uniform_(-0.1, 0.1)

    def forward(self, x):
        for layer in self.module_list:
            x = layer(x)
        return x


def zoo_config(variant: str, channels_in: int, nlin: str, dropout: float, seed: int):
    return {"model::type": variant, "model::channels_in": channels_in, "model::o_dim": 10,
            "model::nlin": nlin, "model::dropout": dropout, "model::init_type": "uniform",
            "model::use_bias": False, "optim::optimizer": "adam", "optim::lr": 0.0003,
            "optim::wd": 0.0, "seed": seed, "training::batchsize": 10,
            "training::epochs_train": 50, "training::start_epoch": 1,
            "training::output_epoch": 1, "training::val_epochs": 1, "training::idx_out": 500,
            "training::checkpoint_dir": None, "cuda": False,
            "dataset::dump": "/home/someone/zoos/MNIST/tune_zoo_mnist_uniform/dataset.pt"}


MODEL_ZOO_TRIALS = [
    ("NN_tune_trainable_8a1b2_00000_0_seed=1_2021-11-02_10-11-12", ("CNN", 1, "tanh", 0.0)),
    ("NN_tune_trainable_8a1b2_00001_1_seed=2_2021-11-02_10-11-13", ("CNN", 1, "tanh", 0.5)),
    ("NN_tune_trainable_8a1b2_00002_2_seed=3_2021-11-02_10-11-14", ("CNN3", 3, "gelu", 0.0)),
]


def write_model_zoos(root: Path, epochs=(0, 1), seed: int = 0) -> dict[str, dict[str, Any]]:
    """Ray Tune trial folders (Ray 1.8 naming). Returns row key -> {"run",
    "config", "module", "result"}."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    made = {}
    experiment = root / "tune_zoo_mnist_uniform"
    for t, (trial, (variant, channels_in, nlin, dropout)) in enumerate(MODEL_ZOO_TRIALS):
        folder = experiment / trial
        folder.mkdir(parents=True)
        config = zoo_config(variant, channels_in, nlin, dropout, t + 1)
        with open(folder / "params.json", "w") as handle:
            json.dump(config, handle)
        lines = []
        for epoch in epochs:
            module = ModelZooReference(variant, channels_in, nlin, dropout)
            result = {"train_loss": -999 if epoch == 0 else float(rng.uniform(0, 2)),
                      "train_acc": -999 if epoch == 0 else float(rng.uniform()),
                      "test_loss": float(rng.uniform(0, 2)), "test_acc": float(rng.uniform()),
                      "time_this_iter_s": 1.25, "done": False, "timesteps_total": None,
                      "episodes_total": None, "training_iteration": epoch,
                      "trial_id": f"8a1b2_{t:05d}", "experiment_id": "e0f1",
                      "date": "2021-11-02_10-11-15", "timestamp": 1635844275,
                      "time_total_s": 2.5, "pid": 4242, "hostname": "node", "node_ip": "10.0.0.1",
                      "config": config, "time_since_restore": 2.5,
                      "timesteps_since_restore": 0, "iterations_since_restore": epoch + 1}
            lines.append(json.dumps(result))
            ckpt = folder / f"checkpoint_{epoch:06d}"
            ckpt.mkdir()
            torch.save(module.state_dict(), ckpt / "checkpoints")
            torch.save({"state": {}, "param_groups": []}, ckpt / "optimizer")
            key = f"tune_zoo_mnist_uniform/{trial}/checkpoint_{epoch:06d}"
            made[key] = {"run": f"tune_zoo_mnist_uniform/{trial}", "config": config,
                         "module": module, "result": result}
        (folder / "result.json").write_text("\n".join(lines) + "\n")
        (folder / "progress.csv").write_text("training_iteration\n")
    return made

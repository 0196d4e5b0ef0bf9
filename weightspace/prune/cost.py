"""What a network costs to store and to run: parameters, multiply-accumulates
and measured latency.

The counts are computed from the :class:`~weightspace.spec.WeightSpaceSpec`
alone, optionally with some spaces resized, so the cost of a structured
pruning can be known before any model is built (this is how a target speed-up
is turned into a pruning ratio).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from weightspace.errors import WeightspaceError
from weightspace.spec import WeightSpaceSpec

#: Parameter roles whose multiply-accumulates are counted (one per weight
#: entry per output position); biases and norms cost a few additions per
#: neuron and are left out, as in the pruning literature.
_MAC_ROLES = ("weight", "depthwise_weight")


def _numel(spec: WeightSpaceSpec, name: str, sizes: Mapping[str, int] | None) -> int:
    """Entries of parameter ``name`` after the spaces in ``sizes`` are resized."""
    p = spec.parameter(name)
    if not sizes:
        return p.numel
    dims = [sizes[a.space] * a.block if a is not None and a.space in sizes else d
            for d, a in zip(p.shape, p.axes, strict=True)]
    return math.prod(dims)


def count_spec_parameters(spec: WeightSpaceSpec, sizes: Mapping[str, int] | None = None) -> int:
    """Trainable values a network of ``spec`` holds (buffers such as running
    statistics excluded), computed from the spec alone, before any model is
    built (for a module's own count, see
    :func:`weightspace.nn.count_trainable_parameters`).

    Args:
        spec: the architecture.
        sizes: optional new sizes of some spaces (a structured pruning).
    """
    return sum(_numel(spec, p.name, sizes) for p in spec.parameters
               if not p.is_buffer and p.role != "unused")


def count_macs(spec: WeightSpaceSpec, sizes: Mapping[str, int] | None = None) -> int:
    """Multiply-accumulates of one forward pass of one sample.

    Each linear/conv weight entry is used once per output position: a conv's
    count is its weight's size times the spatial size of the layer it
    produces. This is the quantity pruning papers report as "FLOPs".

    Args:
        spec: the architecture.
        sizes: optional new sizes of some spaces (a structured pruning).
    """
    total = 0
    for p in spec.parameters:
        if p.role in _MAC_ROLES:
            positions = math.prod(spec.layer(p.layer).spatial) if spec.layer(p.layer).spatial else 1
            total += _numel(spec, p.name, sizes) * positions
    return total


@dataclass(frozen=True)
class ModelCost:
    """Size and speed of one model.

    Args:
        parameters: trainable values (:func:`count_spec_parameters`).
        nonzero: trainable values that are not zero (unstructured sparsity).
        macs: multiply-accumulates per sample (see :func:`count_macs`).
        latency_ms: median wall time of a forward pass of one batch, or
            ``None`` when not measured.
        batch_size: the batch size of the latency measurement.
    """

    parameters: int
    nonzero: int
    macs: int
    latency_ms: float | None = None
    batch_size: int = 0

    def to_dict(self) -> dict:
        return {"parameters": self.parameters, "nonzero": self.nonzero, "macs": self.macs,
                "latency_ms": self.latency_ms, "batch_size": self.batch_size}


@torch.inference_mode()
def measure_latency(model: nn.Module, example_input: Tensor, repeats: int = 30,
                    warmup: int = 5) -> float:
    """Median wall time in milliseconds of ``model(example_input)`` in eval
    mode (the model's mode is restored). The median, not the mean, so one
    preempted run on a shared machine does not move the figure."""
    if repeats < 1:
        raise WeightspaceError(f"repeats must be >= 1, got {repeats}", parameter="repeats")
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(example_input)
        times = []
        for _ in range(repeats):
            if example_input.is_cuda:
                torch.cuda.synchronize(example_input.device)
            start = time.perf_counter()
            model(example_input)
            if example_input.is_cuda:
                torch.cuda.synchronize(example_input.device)
            times.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    return 1000.0 * statistics.median(times)


def model_cost(model: nn.Module, spec: WeightSpaceSpec, latency_batch: int = 0,
               repeats: int = 30) -> ModelCost:
    """Parameters, non-zero parameters and MACs of ``model`` (whose spec is
    ``spec``), and its latency on a random batch of ``latency_batch`` samples
    when that is positive."""
    state = model.state_dict()
    nonzero = sum(int(torch.count_nonzero(state[p.name])) for p in spec.parameters
                  if not p.is_buffer and p.role != "unused")
    latency = None
    if latency_batch > 0:
        like = next((t for t in state.values() if t.is_floating_point()), torch.zeros(()))
        example = torch.randn(latency_batch, *spec.input_shape, device=like.device,
                              dtype=like.dtype)
        latency = measure_latency(model, example, repeats=repeats)
    return ModelCost(parameters=count_spec_parameters(spec), nonzero=nonzero, macs=count_macs(spec),
                     latency_ms=latency, batch_size=latency_batch)

"""Run ``B`` networks of one architecture from their flat parameters, at once.

Metanetworks produce (or read) networks as flat parameter vectors ``[B, P]``
in a spec's order; the meta-pruner's task loss, INR rendering and probe
features all need those ``B`` networks *run*, differentiably in the
parameters. Instead of ``B`` copies of the module, one instance is called
functionally (:func:`torch.func.functional_call`: the module's own weights
are ignored) and vectorised over the batch of state dicts with
:func:`torch.func.vmap`. The state dicts are views into ``params``
(:meth:`WeightSpaceSpec.split_parameters`), so gradients reach ``params``.

When an operation of the module has no batching rule, ``vmap`` raises a
``RuntimeError``; the call then falls back to a loop over the ``B`` networks
(same result, slower), so any module that runs at all runs here.

The module must be in the mode the caller wants (usually eval: BatchNorm in
train mode would update running statistics that are inputs here).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from weightspace.spec.containers import WeightSpaceSpec

logger = logging.getLogger(__name__)

__all__ = ["batched_call", "batched_forward"]


def batched_call(fn: Callable[..., Tensor | tuple[Tensor, ...]], spec: WeightSpaceSpec,
                 params: Tensor, *shared: Tensor) -> Tensor | tuple[Tensor, ...]:
    """``fn(state, *shared)`` for each of ``B`` networks, vectorised.

    Args:
        fn: takes one network's state dict ``{name: tensor}`` and the shared
            arguments; returns a tensor or a tuple of tensors (for example a
            :func:`~torch.func.functional_call` plus values read by hooks).
        spec: the architecture of the flat parameters.
        params: ``[B, P]`` flat parameters in ``spec``'s order.
        *shared: arguments passed unbatched to every call (inputs).

    Returns:
        ``fn``'s output with a leading batch dimension ``B`` (each element of
        a tuple stacked separately).

    Shapes:
        - params: ``[B, P]``
        - output: ``[B, *fn_output]`` (per element for a tuple)
    """
    state = spec.split_parameters(params)
    try:
        return vmap(fn, in_dims=(0, *([None] * len(shared))))(state, *shared)
    except RuntimeError as err:  # an op without a batching rule: loop instead
        logger.debug("vmap over %d networks failed (%s); looping", params.shape[0], err)
    outputs = [fn({k: v[b] for k, v in state.items()}, *shared) for b in range(params.shape[0])]
    return _stack(outputs)


def batched_forward(module: nn.Module, spec: WeightSpaceSpec, params: Tensor,
                    inputs: Any) -> Tensor:
    """The outputs of ``B`` networks of ``module``'s architecture on the same
    inputs, differentiable with respect to ``params``.

    Args:
        module: one instance of the architecture (its own weights and buffers
            are not used; its mode — eval, usually — is).
        spec: its spec.
        params: ``[B, P]`` flat parameters (buffers included) in ``spec``'s
            order.
        inputs: the forward's argument, shared by every network (cast it to
            ``params``' dtype first where the module needs that).

    Returns:
        ``module(inputs)`` of every network, stacked.

    Shapes:
        - params: ``[B, P]``, inputs: ``[n, *input_shape]``
        - output: ``[B, n, *output_shape]``
    """
    def run(state: dict[str, Tensor], x: Any) -> Tensor:
        return functional_call(module, state, (x,))

    return batched_call(run, spec, params, inputs)


def _stack(outputs: list[Tensor | tuple[Tensor, ...]]) -> Tensor | tuple[Tensor, ...]:
    """Stack per-network outputs along a new first dimension (a tuple
    element by element), as ``vmap`` would."""
    if isinstance(outputs[0], tuple):
        return tuple(torch.stack(parts) for parts in zip(*outputs, strict=True))
    return torch.stack(outputs)

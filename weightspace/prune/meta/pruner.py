"""The meta-pruner: a graph metanetwork from networks to easier-to-prune networks.

:class:`MetaPruner` is the model of Liu, Wang, Zhang, "Meta Pruning via Graph
Metanetworks" (arXiv:2506.12041, 2025): a :class:`~weightspace.nn.GMN` (Lim et
al., ICLR 2024) with its equivariant head over the parameter graph of one
architecture, which maps flat parameters ``[B, P]`` to new flat parameters
of the same architecture. See :mod:`weightspace.prune.meta` for how it is
trained and used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from weightspace.graph.template import GraphTemplate
from weightspace.nn.base import as_parameters, graph_batch
from weightspace.nn.gmn import GMN
from weightspace.nn.probes import add_probe_features
from weightspace.prune.structured import PruneError, prunable_spaces
from weightspace.spec import AxisRef, WeightSpaceSpec

__all__ = ["MODES", "MetaPruner"]

#: What the metanetwork may change: ``"edit"`` adds a change to every
#: parameter (the paper's equivariant GMN); ``"gate"`` only rescales each
#: hidden neuron's whole dependency group by a learned non-negative factor.
MODES = ("edit", "gate")

_SOFTPLUS_ONE = math.log(math.e - 1)  # softplus(_SOFTPLUS_ONE) == 1

#: Roles scaled by a neuron's gate: its group (weights in and out, bias, norm
#: parameters) and the running statistics that must follow the producer.
_GATED_ROLES = ("weight", "depthwise_weight", "bias", "norm_weight", "norm_bias",
                "running_mean", "running_var")


def _gated_axes(spec: WeightSpaceSpec, spaces: tuple[str, ...]) -> tuple[tuple[AxisRef, str], ...]:
    """Every (parameter, axis) a gate of ``spaces`` scales, with its space, in
    parameter then axis order (the order the factors are multiplied in).

    A running variance follows its producer only (axis 0; it is squared there).
    """
    order = {p.name: i for i, p in enumerate(spec.parameters)}
    gated = []
    for space in spaces:
        for ref in spec.axes_of(space):
            role = spec.parameter(ref.parameter).role
            if role in _GATED_ROLES and not (role == "running_var" and ref.axis != 0):
                gated.append((ref, space))
    return tuple(sorted(gated, key=lambda g: (order[g[0].parameter], g[0].axis)))


class MetaPruner(nn.Module):
    """A graph metanetwork that maps networks of one architecture to networks
    of the same architecture that are easier to prune structurally (Liu,
    Wang, Zhang, "Meta Pruning via Graph Metanetworks", arXiv:2506.12041).

    A :class:`~weightspace.nn.GMN` with the equivariant head over the
    parameter graph of ``spec`` (:class:`~weightspace.graph.GraphTemplate`):
    permuting the input network's hidden neurons permutes the output's the
    same way, and the untrained pruner is the identity map.

    Two output modes:

    * ``"edit"`` (the paper's): the GMN's equivariant decoder adds a change
      to every weight, bias and norm parameter (in units of each layer's
      fitted standard deviation).
    * ``"gate"`` (a constrained variant): a zero-initialised MLP on each
      hidden neuron's node features gives a factor
      ``s_i = softplus(g_i + log(e - 1)) > 0`` (1 before training)
      that multiplies every parameter of the neuron's dependency group —
      incoming weights and bias, norm parameters, outgoing weights — with
      BatchNorm running statistics following (mean × s, variance × s²). The
      metanetwork then only decides how much of each neuron to keep: one
      number per neuron instead of one per weight, a much smaller family of
      maps to learn from a small zoo. Neurons of a residual stream get the
      mean of their layers' gates.

    Args:
        spec: the architecture of the networks it prunes.
        hidden: node and edge channels of the GMN.
        num_layers: message-passing layers.
        fourier: random Fourier frequencies per input scalar.
        fourier_scale: their standard deviation.
        aggr: message aggregation.
        dropout: dropout inside the GMN layers.
        seed: seed of the initial weights (the construction does not touch
            the global random state).
        mode: ``"edit"`` or ``"gate"`` (see above).

    Shapes:
        - input: ``[B, P]`` flat parameters in ``spec``'s order
          (``P = spec.num_parameters``), any floating dtype
        - output: ``[B, P]`` new flat parameters, in the input's dtype
    """

    def __init__(self, spec: WeightSpaceSpec, *, hidden: int = 64, num_layers: int = 4,
                 fourier: int = 16, fourier_scale: float = 4.0, aggr: str = "mean",
                 dropout: float = 0.0, seed: int = 0, mode: str = "edit") -> None:
        super().__init__()
        if mode not in MODES:
            raise PruneError(f"unknown meta-pruner mode {mode!r}; choose one of {MODES}",
                             parameter="mode")
        self.spec = spec
        self.mode = mode
        self.config = {"hidden": int(hidden), "num_layers": int(num_layers),
                       "fourier": int(fourier), "fourier_scale": float(fourier_scale),
                       "aggr": str(aggr), "dropout": float(dropout), "seed": int(seed),
                       "mode": mode}
        self.template = GraphTemplate.for_spec(spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.gmn = GMN(self.template, 1, hidden=hidden, num_layers=num_layers,
                           fourier=fourier, fourier_scale=fourier_scale, aggr=aggr,
                           dropout=dropout, head="equivariant")
            if mode == "gate":
                self.gate = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(),
                                          nn.Linear(hidden, 1))
                nn.init.zeros_(self.gate[-1].weight)
                nn.init.zeros_(self.gate[-1].bias)
                del self.gmn.decoder  # the gate replaces the per-weight decoder
        # graph nodes of every prunable space, [layers on the space, size]
        self._gate_nodes = {
            space: torch.stack([torch.arange(layer.size) + self.template.layer_offsets[layer.name]
                                for layer in spec.layers if layer.space == space])
            for space in prunable_spaces(spec)}
        self._gated_axes = _gated_axes(spec, tuple(self._gate_nodes))
        # set once the encoders' per-depth statistics are fitted (saved with the weights)
        self.register_buffer("normalisation_fitted", torch.zeros((), dtype=torch.bool))

    @property
    def is_normalisation_fitted(self) -> bool:
        return bool(self.normalisation_fitted)

    @torch.no_grad()
    def fit_normalisation(self, params: Tensor) -> MetaPruner:
        """Fit the GMN encoders' per-depth standardisation on ``[N, P]``
        training networks (the equivariant head's changes are in these units,
        so every layer is changed on its own scale)."""
        self.gmn.fit_normalisation(self._as_gmn_input(params))
        self.normalisation_fitted.fill_(True)
        return self

    def _as_gmn_input(self, params: Tensor) -> Tensor:
        params = params.unsqueeze(0) if params.dim() == 1 else params
        if params.dim() != 2 or params.shape[1] != self.spec.num_parameters:
            raise PruneError(f"the meta-pruner expects flat parameters [B, "
                             f"{self.spec.num_parameters}] of its architecture, got "
                             f"{list(params.shape)}", parameter="params")
        weight = next(self.gmn.parameters())
        return params.to(device=weight.device, dtype=weight.dtype)

    def forward(self, params: Tensor) -> Tensor:
        inputs = self._as_gmn_input(params)
        if self.mode == "edit":
            out = as_parameters(self.gmn(inputs), self.template)
        else:
            out = self._apply_gates(inputs, self.neuron_gates(inputs))
        return out.to(params.dtype)

    @torch.no_grad()
    def rewrite(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Map one network, as a state dict, through the pruner (eval mode,
        no gradient). Entries the spec does not describe (BatchNorm's
        ``num_batches_tracked``) are passed through unchanged."""
        state = {k: v.detach() for k, v in state_dict.items()}
        self.spec.check_state_dict(state)
        was_training = self.training
        self.eval()
        try:
            mapped = self.spec.unflatten(self(self.spec.flatten(state)[None])[0].cpu())
        finally:
            self.train(was_training)
        return {**state, **mapped}

    def neuron_gates(self, params: Tensor) -> dict[str, Tensor]:
        """``"gate"`` mode: each hidden neuron's factor (1 before training).

        Shapes:
            - params: ``[B, P]``
            - output: ``{space: [B, size]}``
        """
        if self.mode != "gate":
            raise PruneError("neuron_gates needs a meta-pruner of mode 'gate'")
        params = self._as_gmn_input(params)
        data = graph_batch(params, self.template)
        h, _ = self.gmn.encode(add_probe_features(data, self.gmn.probe_features))
        g = self.gate(h).reshape(params.shape[0], self.template.num_nodes)
        # softplus shifted so that g = 0 (the zero-initialised MLP) gives 1; smooth, so a
        # gate near zero can still come back
        return {space: nn.functional.softplus(g[:, nodes.to(g.device)].mean(1) + _SOFTPLUS_ONE)
                for space, nodes in self._gate_nodes.items()}

    def _apply_gates(self, params: Tensor, gates: Mapping[str, Tensor]) -> Tensor:
        state = self.spec.split_parameters(params)
        for ref, space in self._gated_axes:
            factor = gates[space].repeat_interleave(ref.block, dim=1)
            if self.spec.parameter(ref.parameter).role == "running_var":
                factor = factor.square()
            shape = [params.shape[0]] + [1] * (state[ref.parameter].dim() - 1)
            shape[ref.axis + 1] = factor.shape[1]
            state[ref.parameter] = state[ref.parameter] * factor.reshape(shape)
        return self.spec.join_parameters(state)

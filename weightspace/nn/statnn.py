"""StatNN: an MLP on per-entry weight statistics.

Reference: Unterthiner, Keysers, Gelly, Bousquet and Tolstikhin, "Predicting
Neural Network Accuracy from Weights", arXiv:2002.11448, 2020. A small set of
summary statistics of every weight tensor (mean, variance, quantiles)
predicts a CNN's test accuracy remarkably well; the statistics are invariant
to every permutation of hidden neurons by construction (a permutation only
reorders the entries of each tensor), so the model is an invariant
metanetwork without any weight sharing.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.data import Data

from weightspace.errors import WeightspaceError
from weightspace.graph import GraphTemplate
from weightspace.nn.base import FlatMetanetwork, check_head, flat_parameters
from weightspace.nn.flat_mlp import make_mlp
from weightspace.spec import ParameterSpec, WeightSpaceSpec

#: The statistics of one entry, in feature order.
STATISTICS = ("mean", "var", "q0", "q25", "q50", "q75", "q100")
#: The quantile levels of ``q0`` … ``q100``.
QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)


def statistic_entries(spec: WeightSpaceSpec) -> tuple[ParameterSpec, ...]:
    """The entries :func:`layer_statistics` summarises, in spec order: every
    floating-point entry that belongs to a layer (weights, biases, norm γ/β,
    running statistics; not integer counters such as ``num_batches_tracked``
    nor entries ``forward`` never uses)."""
    return tuple(p for p in spec.parameters
                 if p.layer and p.role != "unused" and getattr(torch, p.dtype).is_floating_point)


def statistic_names(spec: WeightSpaceSpec) -> list[str]:
    """``"<entry>.<statistic>"`` for every feature of :func:`layer_statistics`,
    in order (e.g. ``net.0.weight.mean``, ``net.0.weight.var``,
    ``net.0.weight.q0`` … ``net.0.weight.q100``, ``net.0.bias.mean`` …)."""
    return [f"{p.name}.{s}" for p in statistic_entries(spec) for s in STATISTICS]


def _quantiles(sorted_values: Tensor, levels: tuple[float, ...]) -> Tensor:
    """Linear-interpolation quantiles (``torch.quantile``'s default) of rows
    that are already sorted, without ``torch.quantile``'s input-size limit.

    Shapes: ``[B, n]`` -> ``[B, len(levels)]``.
    """
    n = sorted_values.shape[1]
    pos = torch.tensor(levels, dtype=torch.float64) * (n - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo).to(sorted_values.dtype).to(sorted_values.device)
    low = sorted_values[:, lo.to(sorted_values.device)]
    high = sorted_values[:, hi.to(sorted_values.device)]
    return low + (high - low) * frac


def layer_statistics(spec: WeightSpaceSpec, params: Tensor) -> Tensor:
    r"""Per-entry statistics of flat parameters.

    For every entry of :func:`statistic_entries` (spec order) the 7 numbers
    :data:`STATISTICS`: mean, variance (population, so one-element entries
    give 0 rather than NaN), and the 0, 25, 50, 75 and 100 % quantiles
    (linear interpolation, as :func:`torch.quantile`). Feature ``7 i + j`` is
    statistic ``j`` of entry ``i``; :func:`statistic_names` names them.

    Every statistic depends only on the multiset of an entry's values, so
    permuting hidden neurons leaves the features unchanged (up to the
    rounding of the sums).

    Args:
        spec: the architecture.
        params: flat parameters in the spec's order.

    Shapes:
        - params: ``[B, P]`` (or ``[P]``)
        - output: ``[B, 7 * num_entries]``
    """
    if params.dim() == 1:
        params = params.unsqueeze(0)
    entries = spec.split_parameters(params)
    features = []
    for p in statistic_entries(spec):
        values = entries[p.name].flatten(1)
        mean = values.mean(1, keepdim=True)
        var = values.var(1, correction=0, keepdim=True)
        quantiles = _quantiles(values.sort(1).values, QUANTILES)
        features += [mean, var, quantiles]
    if not features:
        return params.new_zeros(params.shape[0], 0)
    return torch.cat(features, dim=1)


class StatNN(FlatMetanetwork):
    r"""StatNN (Unterthiner et al. 2020): standardised per-entry statistics
    (:func:`layer_statistics`) followed by an MLP. Invariant head only.

    The standardisation uses the buffers ``feature_mean`` and
    ``feature_std``; they are the identity (0 and 1) until
    :meth:`fit_normalisation` sets them from training data. Fit them before
    training: the raw statistics of different entries differ by orders of
    magnitude (a variance of 1e-4 next to a max of 3).

    Args:
        template: the input architecture's template (only its spec is read).
        out_dim: output width.
        hidden: width of the MLP's hidden layers.
        num_layers: number of linear layers of the MLP.
        dropout: dropout after every hidden activation.
        head: must be ``"invariant"``.

    Example::

        >>> model = StatNN(GraphTemplate.for_spec(spec), out_dim=1)
        >>> model.fit_normalisation(train_params)
        >>> accuracy = model(params)

    Shapes:
        - input: ``[B, P]`` flat parameters, or a PyG ``Batch`` of ``B`` graphs
          of ``template``'s architecture
        - output: ``[B, out_dim]``
    """

    def __init__(self, template: GraphTemplate, out_dim: int, *, hidden: int = 256, num_layers: int = 3,
                 dropout: float = 0.0, head: str = "invariant") -> None:
        super().__init__(template)
        self.head = check_head(head, ("invariant",), model="StatNN")
        self.num_features = len(STATISTICS) * len(statistic_entries(self.spec))
        if self.num_features == 0:
            raise WeightspaceError("StatNN needs at least one floating-point parameter with a layer; "
                             "the spec has none")
        self.register_buffer("feature_mean", torch.zeros(self.num_features))
        self.register_buffer("feature_std", torch.ones(self.num_features))
        self.mlp = make_mlp(self.num_features, hidden, out_dim, num_layers, dropout)

    def statistics(self, inputs: Tensor | Data) -> Tensor:
        """Raw (unstandardised) statistics ``[B, F]``."""
        return layer_statistics(self.spec, self.parameters_of(inputs))

    @torch.no_grad()
    def fit_normalisation(self, params_or_batch: Tensor | Data, eps: float = 1e-8) -> StatNN:
        """Set ``feature_mean`` / ``feature_std`` to the statistics' mean and
        standard deviation over the given networks (features that are
        constant get std 1). Returns ``self``.

        Shapes:
            params_or_batch: ``[B, P]`` or a ``Batch`` of ``B`` graphs (``B >= 2``)
        """
        params = flat_parameters(params_or_batch, self.template)
        if params.shape[0] < 2:
            raise WeightspaceError("fit_normalisation needs at least 2 networks to estimate a spread")
        stats = layer_statistics(self.spec, params.to(torch.float64))
        std = stats.std(0)
        std = torch.where(std > eps, std, torch.ones_like(std))
        self.feature_mean.copy_(stats.mean(0))
        self.feature_std.copy_(std)
        return self

    def forward(self, inputs: Tensor | Data) -> Tensor:
        stats = self.statistics(inputs)
        stats = (stats - self.feature_mean.to(stats.dtype)) / self.feature_std.to(stats.dtype)
        return self.mlp(stats)


__all__ = ["QUANTILES", "STATISTICS", "StatNN", "layer_statistics", "statistic_entries",
           "statistic_names"]

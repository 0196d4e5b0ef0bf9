"""Probe features: what every neuron of an INR computes on a few inputs.

Reference: Kofinas et al., "Graph Neural Networks for Learning Equivariant
Representations of Neural Networks" (Neural Graphs), ICLR 2024, Sec. 3.3.
A set of learned input coordinates (probes) is fed through every input
network; each neuron's value on the probes becomes an extra feature of its
node. Weights say how a neuron is wired, probe features say what it
computes, which helps most for INRs whose weights are hard to read
(SIRENs).

Permuting an input network's hidden neurons permutes their values on the
probes the same way, so the features are permutation equivariant and can be
appended to the graph's node features (:func:`with_probe_features`) without
breaking the symmetry of a graph metanetwork.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch_geometric.data import Data

from weightspace.activations import activation_sites, capture
from weightspace.errors import WeightspaceError
from weightspace.functional import batched_call
from weightspace.graph import GraphTemplate
from weightspace.nn.base import flat_parameters
from weightspace.spec import WeightSpaceSpec

PROBE_INITS = ("uniform", "grid")


def check_linear_chain(spec: WeightSpaceSpec) -> None:
    """Raise ``ValueError`` unless ``spec`` is a chain of linear layers on a
    vector input (an MLP or SIREN: ``input -> linear -> ... -> linear``, each
    layer fed by the previous one through one weight; norm parameters attached
    to a layer are fine)."""
    layers = spec.layers
    if not layers or layers[0].op != "input" or len(spec.input_layers) != 1:
        raise WeightspaceError("probe features need exactly one input layer, first in the spec")
    if len(layers) < 2:
        raise WeightspaceError("probe features need at least one linear layer")
    for previous, layer in zip(layers[:-1], layers[1:], strict=True):
        inputs = layer.inputs
        if (layer.op != "linear" or len(inputs) != 1 or inputs[0].kind != "weight"
                or inputs[0].source != previous.name):
            fed = ", ".join(f"{i.kind} from {i.source!r}" for i in inputs) or "nothing"
            raise WeightspaceError(
                f"probe features support chains of linear layers (MLPs, SIRENs) only; layer "
                f"{layer.name!r} is a {layer.op!r} layer fed by {fed}, not a linear layer fed by "
                f"{previous.name!r}")
        expected = "output" if layer is layers[-1] else "hidden"
        if layer.role != expected:
            raise WeightspaceError(f"probe features need a chain whose last layer is the only output; "
                             f"layer {layer.name!r} has role {layer.role!r}")
    if len(spec.input_shape) != 1:
        raise WeightspaceError(f"probe features need a vector input (an MLP/SIREN); the architecture's "
                         f"input has shape {list(spec.input_shape)}")


def _initial_probes(num_probes: int, in_features: int, init: str,
                    generator: torch.Generator | None) -> Tensor:
    if init == "uniform":
        return torch.rand(num_probes, in_features, generator=generator) * 2 - 1
    if init == "grid":
        # num_probes evenly spread points of the smallest regular grid with
        # at least num_probes points
        per_axis = max(2, math.ceil(num_probes ** (1 / in_features) - 1e-9))
        axes = [torch.linspace(-1, 1, per_axis)] * in_features
        grid = torch.cartesian_prod(*axes).reshape(-1, in_features)
        pick = torch.linspace(0, grid.shape[0] - 1, num_probes).round().long()
        return grid[pick].clone()
    raise WeightspaceError(f"init={init!r} is not supported; choose one of {list(PROBE_INITS)}")


class ProbeFeatures(nn.Module):
    r"""Learned probe inputs and every neuron's value on them.

    Given ``B`` networks of one MLP/SIREN architecture, runs each on the
    ``K`` probes (all networks at once: :func:`torch.func.vmap` of
    :func:`torch.func.functional_call` over the batch of state dicts) and
    returns, for every node of their parameter graphs, in the graphs' node
    order (spec layer order, neurons in index order — the order of
    :attr:`GraphTemplate.layer_offsets`):

    * input nodes: the probe coordinates;
    * hidden nodes: the neuron's value as passed on to the next layer, i.e.
      after its activation (and after any norm / dropout attached to it —
      whatever the next linear layer receives);
    * output nodes: the network's outputs.

    **Why a** ``network`` **argument.** The spec names each layer's activation
    but not its parameters (a SIREN's frequency :math:`\omega_0` lives in the
    module, not the state dict), so the features are computed by running one
    instance of the architecture with each input network's parameters. The
    hidden values are read by forward pre-hooks on the modules that own the
    next layers' weights. The instance is deep-copied and kept in eval mode;
    its own weights are never used and are not part of this module's
    parameters or state dict. For a zoo, ``network = model_def.build()``
    (:class:`~weightspace.zoo.rows.ModelDef`).

    Args:
        template: the architecture's template (a chain of linear layers on a
            vector input; anything else raises ``ValueError``).
        num_probes: ``K``.
        network: one instance of the architecture (any weights).
        init: initial probes: ``"uniform"`` (i.i.d. :math:`U(-1, 1)` per
            coordinate) or ``"grid"`` (``K`` evenly spread points of a
            regular grid over :math:`[-1, 1]^d`).
        generator: random generator of the ``"uniform"`` init.

    Attributes:
        probes: ``nn.Parameter`` ``[K, in_features]``, learned with the
            metanetwork that consumes the features.

    Example::

        >>> probes = ProbeFeatures(template, 64, network=SIREN())
        >>> batch = with_probe_features(template.to_batch(params), probes)
        >>> model = EdgeDeepSets(template, 10, extra_node_dim=64)

    Shapes:
        - input: a PyG ``Batch`` of ``B`` graphs of ``template``'s
          architecture, or ``[B, P]`` flat parameters
        - output: ``[B * N, K]`` (``N = template.num_nodes``), rows in the
          batch's node order
    """

    def __init__(self, template: GraphTemplate, num_probes: int = 64, *, network: nn.Module,
                 init: str = "uniform", generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(template, GraphTemplate):
            raise TypeError(f"expected a GraphTemplate, got {type(template).__name__}; "
                            "make one with GraphTemplate.for_spec(spec)")
        if num_probes < 1:
            raise WeightspaceError(f"num_probes must be at least 1, got {num_probes}")
        spec = template.spec
        check_linear_chain(spec)
        self.template = template
        self.in_features = spec.input_shape[0]
        self.probes = nn.Parameter(_initial_probes(num_probes, self.in_features, init, generator))
        network = copy.deepcopy(network).eval()
        names = set(dict(network.named_parameters())) | set(dict(network.named_buffers()))
        missing = [p.name for p in spec.parameters if p.name not in names]
        if missing:
            raise WeightspaceError(f"network has no entry {missing[0]!r} of the template's architecture; "
                             "pass an instance of the architecture the template was traced from")
        # the hidden layers' values as the next linear layers receive them
        self._sites = [site for site in activation_sites(network, spec, place="consumer_input")
                       if spec.layer(site.layer).role == "hidden"]
        # not a submodule: its parameters are replaced on every call and must
        # not be trained, moved or saved with the probes
        object.__setattr__(self, "network", network)
        self._check_network()

    @property
    def num_probes(self) -> int:
        return self.probes.shape[0]

    @property
    def spec(self) -> WeightSpaceSpec:
        return self.template.spec

    def extra_repr(self) -> str:
        return (f"num_probes={self.num_probes}, in_features={self.in_features}, "
                f"network={type(self.network).__name__}")

    def _run(self, state: dict[str, Tensor], probes: Tensor) -> tuple[list[Tensor], Tensor]:
        """One network on the probes: (hidden values ``[K, size]`` per hidden
        layer, output ``[K, out]``)."""
        with capture(self.network, self._sites) as seen:
            out = functional_call(self.network, state, (probes,))
        hidden = []
        for site in self._sites:
            values = seen.values[site]
            if len(values) > 1:
                raise WeightspaceError(f"module {site.module!r} ran {len(values)} times in one "
                                       "forward pass; probe features need each linear layer to "
                                       "run once", parameter="network")
            value = values[0] if values else None
            size = self.spec.layer(site.layer).size
            if not isinstance(value, Tensor) or tuple(value.shape) != (probes.shape[0], size):
                got = "nothing" if value is None else (
                    list(value.shape) if isinstance(value, Tensor) else type(value).__name__)
                raise WeightspaceError(
                    f"the input of module {site.module!r} was {got}, expected the previous layer's "
                    f"values [{probes.shape[0]}, {size}]; probe features need the network to call "
                    "its linear layers as modules", parameter="network")
            hidden.append(value)
        return hidden, out

    def _check_network(self) -> None:
        """Run the network once on two probes so that an unsupported network
        fails at construction, not in the first training step."""
        dtype = next(iter(self.network.state_dict().values()), torch.zeros(())).dtype
        dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
        state = {k: v.detach() for k, v in self.network.state_dict().items()}
        with torch.no_grad():
            _, out = self._run(state, torch.zeros(2, self.in_features, dtype=dtype))
        out_size = self.spec.layers[-1].size
        if not isinstance(out, Tensor) or tuple(out.shape) != (2, out_size):
            raise WeightspaceError(f"the network should return one tensor [num_probes, {out_size}] on "
                             f"[num_probes, {self.in_features}] coordinates, got "
                             f"{list(out.shape) if isinstance(out, Tensor) else type(out).__name__}")

    def forward(self, inputs: Tensor | Data) -> Tensor:
        probes = self.probes
        params = flat_parameters(inputs, self.template).to(probes.dtype)
        b = params.shape[0]

        def one(state_one: dict[str, Tensor], probes_: Tensor) -> tuple[Tensor, ...]:
            hidden, out = self._run(state_one, probes_)
            return (*hidden, out)

        values = batched_call(one, self.spec, params, probes)  # [B, K, size] per layer
        nodes = [probes.t().expand(b, -1, -1)] + [v.transpose(1, 2) for v in values]
        features = torch.cat(nodes, dim=1)  # [B, N, K]
        return features.reshape(b * self.template.num_nodes, self.num_probes)


def with_probe_features(batch: Data, probes: Tensor | ProbeFeatures) -> Data:
    """A shallow copy of ``batch`` whose node features are
    ``[x | probe features]``.

    Metanetworks that consume it must be built for the widened width
    ``5 * node_dim + K`` (e.g. ``EdgeDeepSets(template, out_dim,
    extra_node_dim=K)``, ``NodeEncoder(template, hidden, extra_dim=K)``).
    :meth:`GraphTemplate.from_batch` does not accept the widened batch: take
    parameters from the original one.

    Args:
        batch: graphs, e.g. from :meth:`GraphTemplate.to_batch`.
        probes: per-node features ``[num_nodes, K]`` in ``batch``'s node order
            (the output of :class:`ProbeFeatures`), or a :class:`ProbeFeatures`
            module, which is then run on ``batch``.

    Shapes:
        - batch.x: ``[N, 5 * node_dim]``
        - output.x: ``[N, 5 * node_dim + K]``
    """
    features = probes(batch) if isinstance(probes, ProbeFeatures) else probes
    if features.dim() != 2 or features.shape[0] != batch.x.shape[0]:
        raise WeightspaceError(f"probe features have shape {list(features.shape)}, expected "
                         f"[{batch.x.shape[0]}, K] (one row per node of the batch)")
    out = copy.copy(batch)
    out.x = torch.cat([batch.x, features.to(batch.x.dtype)], dim=1)
    return out


def optional_probe_features(template: GraphTemplate, probes: int, network: nn.Module | None,
                            model: str) -> ProbeFeatures | None:
    """The :class:`ProbeFeatures` a graph metanetwork built with
    ``probes=K, network=...`` owns, or ``None`` for ``probes=0``.

    Raises:
        ValueError: ``probes`` without ``network`` (named after ``model``).
    """
    if not probes:
        return None
    if network is None:
        raise WeightspaceError(f"{model}(probes=...) needs network=, an instance of the input networks' "
                         "architecture to run the probes through (e.g. zoo.group(name).model_def.build())")
    return ProbeFeatures(template, probes, network=network)


def add_probe_features(batch: Data, probes: ProbeFeatures | None) -> Data:
    """``with_probe_features(batch, probes)``, or ``batch`` itself when the
    model has no probes."""
    return batch if probes is None else with_probe_features(batch, probes)


__all__ = ["PROBE_INITS", "ProbeFeatures", "add_probe_features", "check_linear_chain", "optional_probe_features",
           "with_probe_features"]

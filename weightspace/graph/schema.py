"""The parameter-graph schema: what every node and edge attribute means.

One graph per network (a PyG :class:`~torch_geometric.data.Data`); graphs of
one architecture share everything but the values, so a batch of ``B``
checkpoints is made by one gather (:class:`~weightspace.graph.GraphTemplate`).

Nodes — one per neuron/channel of every layer of the spec (input neurons,
each linear/conv layer's outputs, norm layers that got their own group), in
the spec's layer order, neurons in index order:

=================  ==========================  ===============================================
attribute          shape / dtype               meaning
=================  ==========================  ===============================================
``x``              ``[N, 5 * node_dim]`` float the per-neuron parameters in fixed slots
                                               :data:`NODE_SLOTS` (bias, norm γ, norm β,
                                               running mean, running var), slot-major; each
                                               slot holds ``node_dim`` values (1 unless a
                                               LayerNorm normalises several entries per
                                               neuron); absent slots are 0
``x_mask``         ``[N, 5]`` bool             which slots are present
``node_type``      ``[N]`` long                :data:`NODE_TYPES`: input / hidden / output
``node_op``        ``[N]`` long                :data:`LAYER_OPS`: what produced the layer
``node_act``       ``[N]`` long                :data:`ACTIVATIONS`: its activation
``node_norm``      ``[N]`` long                :data:`NORMS`: the norm whose parameters it holds
``node_depth``     ``[N]`` long                weight layers from the input
``node_pos``       ``[N]`` long                index of the neuron in a non-permutable
                                               (input/output) space, −1 for permutable ones
``node_layer``     ``[N]`` long                index of the node's layer in the spec
=================  ==========================  ===============================================

Edges — one per (input neuron, output neuron) pair of every weight, plus
identity edges, directed along the computation:

=================  ==============================  ===========================================
``edge_index``     ``[2, E]`` long                 (source neuron, target neuron)
``edge_attr``      ``[E, edge_dim]`` float         the weight; a conv kernel centred in the
                                                   template's kernel grid and flattened; the
                                                   ``H·W`` block of a conv→linear flatten from
                                                   position 0; identity edges carry their
                                                   coefficient (±1) where a scalar weight sits
``edge_type``      ``[E]`` long                    :data:`EDGE_TYPES`
=================  ==============================  ===========================================

Graph attribute ``scalars`` (``[S]`` float, concatenated over a batch) holds
parameters that index no neuron (``num_batches_tracked``, LayerNorm
parameters shared by all channels, unused entries), so that
``from_graph(to_graph(sd))`` is exact for every entry of the state dict.

**Kernel grid and widths.** A scalar weight (linear layer, 1×1 conv) sits at
the centre of the kernel grid; a ``k``-sized kernel is centred in it (a 3×3
kernel inside a 5×5 grid is the same operator as the zero-padded 5×5 one).
Kernels of a lower rank get extent 1 on the leading axes. The grid defaults
to the largest kernel of the architecture; ``edge_dim`` defaults to
``max(prod(grid), largest flatten block)``. Graphs of different
architectures batch together when their templates share ``kernel_grid``,
``edge_dim`` and ``node_dim`` — build them with
:meth:`GraphTemplate.common`.
"""

from __future__ import annotations

from weightspace.errors import WeightspaceError

NODE_SLOTS = ("bias", "norm_weight", "norm_bias", "running_mean", "running_var")
NODE_TYPES = ("input", "hidden", "output")
LAYER_OPS = (
    "input",
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "depthwise_conv1d",
    "depthwise_conv2d",
    "depthwise_conv3d",
    "batch_norm",
    "instance_norm",
    "layer_norm",
    "group_norm",
)
ACTIVATIONS = (
    "identity",
    "relu",
    "leaky_relu",
    "gelu",
    "silu",
    "tanh",
    "sigmoid",
    "sin",
    "elu",
    "selu",
    "celu",
    "softplus",
    "mish",
    "relu6",
    "hardtanh",
    "hardswish",
    "hardsigmoid",
    "softsign",
    "softmax",
    "log_softmax",
    "cos",
    "exp",
    "other",
)
NORMS = ("none", "batch", "instance", "layer", "group")
EDGE_TYPES = ("linear", "conv", "depthwise", "flatten", "residual", "norm")


def vocabulary_id(vocabulary: tuple[str, ...], name: str) -> int:
    """Index of ``name``; unknown activations map to ``"other"``."""
    try:
        return vocabulary.index(name)
    except ValueError:
        if "other" in vocabulary:
            return vocabulary.index("other")
        raise WeightspaceError(f"{name!r} is not one of {vocabulary}") from None

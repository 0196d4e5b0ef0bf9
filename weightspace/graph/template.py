"""Graph templates: the structure of an architecture's parameter graph, once.

Everything about a parameter graph except the values — ``edge_index``, node
and edge types, and where each value comes from in the flat parameter vector
— depends only on the architecture. A :class:`GraphTemplate` computes it once;
turning ``B`` checkpoints into one batched graph is then one gather on the
``[B, P]`` parameter matrix (:meth:`GraphTemplate.to_batch`), and the inverse
one gather back (:meth:`GraphTemplate.from_batch`). No Python loop runs per
model, on CPU or GPU.

The schema is documented in :mod:`weightspace.graph.schema`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from threading import Lock

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from weightspace.graph.schema import (
    ACTIVATIONS,
    EDGE_TYPES,
    LAYER_OPS,
    NODE_SLOTS,
    NODE_TYPES,
    NORMS,
    vocabulary_id,
)
from weightspace.spec.containers import WeightSpaceSpec
from weightspace.spec.errors import SpecError, StateDictMismatchError

NODE_ATTRS = ("node_type", "node_op", "node_act", "node_norm", "node_depth", "node_pos", "node_layer")

#: What each attribute of a batched parameter graph is concatenated over: one
#: row per node, one row (``edge_index``: one column) per edge, or one entry
#: per scalar. Attributes not listed (``batch``, ``ptr``) are PyG's own.
BATCH_ATTRIBUTES: dict[str, str] = {
    "x": "node",
    "edge_index": "edge",
    "edge_attr": "edge",
    "edge_type": "edge",
    "x_mask": "node",
    "scalars": "scalar",
    **{attr: "node" for attr in NODE_ATTRS},
}


def wrap_graph_batch(tensors: dict[str, Tensor], node_ptr: Tensor, edge_ptr: Tensor,
                     scalar_ptr: Tensor) -> Batch:
    """A :class:`Batch` around already batched graph tensors, with the
    bookkeeping that ``get_example`` / ``to_data_list`` need (what
    ``Batch.from_data_list`` would have recorded).

    The graphs may differ in size (rows of several architectures, see
    :mod:`weightspace.zoo.batching`); :meth:`GraphTemplate.wrap_batch` is the
    case of one template.

    Args:
        tensors: attribute -> the graphs' values concatenated (the keys of
            :data:`BATCH_ATTRIBUTES` that are present, plus ``batch`` /
            ``ptr``); ``edge_index`` holds batch-wide node ids.
        node_ptr: where each graph's nodes start, and the total.
        edge_ptr: the same for edges.
        scalar_ptr: the same for ``scalars``.

    Shapes:
        - node_ptr, edge_ptr, scalar_ptr: ``[B + 1]`` (on the CPU)
    """
    num_graphs = len(node_ptr) - 1
    batch = Batch(_base_cls=Data, **tensors)
    ptrs = {"node": node_ptr, "edge": edge_ptr, "scalar": scalar_ptr}
    slices = {key: ptrs[kind] for key, kind in BATCH_ATTRIBUTES.items() if key in tensors}
    zeros = torch.zeros(num_graphs, dtype=torch.long)
    incs = {key: zeros for key in slices}
    if "edge_index" in incs:
        # each graph's edge_index counts from its own first node
        incs["edge_index"] = node_ptr[:-1]
    batch._num_graphs = num_graphs
    batch._slice_dict = slices
    batch._inc_dict = incs
    return batch


def _padded_kernel(kernel: tuple[int, ...], rank: int) -> tuple[int, ...]:
    return (1,) * (rank - len(kernel)) + tuple(kernel)


def _spec_kernel_grid(spec: WeightSpaceSpec) -> tuple[int, ...]:
    kernels = [layer.kernel_size for layer in spec.layers if layer.kernel_size]
    if not kernels:
        return ()
    rank = max(len(k) for k in kernels)
    padded = [_padded_kernel(k, rank) for k in kernels]
    return tuple(max(k[d] for k in padded) for d in range(rank))


def _node_block(spec: WeightSpaceSpec, p) -> int:
    space_axes = [a for a in p.axes if a is not None]
    return p.numel // spec.space(space_axes[0].space).size if space_axes else 1


def _spec_widths(spec: WeightSpaceSpec) -> tuple[int, int]:
    """(largest flatten block, largest per-neuron slot width)."""
    block, node = 1, 1
    for p in spec.parameters:
        if p.role == "weight" and p.axes[1] is not None:
            block = max(block, p.axes[1].block)
        if p.role in NODE_SLOTS:
            node = max(node, _node_block(spec, p))
    return block, node


class GraphTemplate:
    r"""The parameter-graph structure of one architecture.

    Args:
        spec: the architecture's :class:`~weightspace.WeightSpaceSpec`.
        kernel_grid: the grid conv kernels are centred in (default: the
            largest kernel of ``spec``; ``()`` when it has no conv).
        edge_dim: width of ``edge_attr`` (default: the grid size or the largest
            conv→linear flatten block, whichever is larger).
        node_dim: values per node slot (default: the largest per-neuron block,
            usually 1).

    Example::

        >>> template = GraphTemplate(spec)
        >>> batch = template.to_batch(params)        # params: [B, P]
        >>> torch.equal(template.from_batch(batch), params)
        True

    Shapes:
        - params: ``[B, P]`` (or ``[P]`` for :meth:`to_data`)
        - batch.x: ``[B * N, 5 * node_dim]``, batch.edge_attr:
          ``[B * E, edge_dim]``, batch.edge_index: ``[2, B * E]``
    """

    def __init__(
        self,
        spec: WeightSpaceSpec,
        kernel_grid: Sequence[int] | None = None,
        edge_dim: int | None = None,
        node_dim: int | None = None,
    ) -> None:
        self.spec = spec
        own_grid = _spec_kernel_grid(spec)
        grid = own_grid if kernel_grid is None else tuple(int(k) for k in kernel_grid)
        if len(grid) < len(own_grid):
            raise SpecError(f"kernel_grid {list(grid)} has fewer axes than the architecture's "
                            f"kernels {list(own_grid)}", parameter="kernel_grid")
        self.kernel_grid = grid
        grid_numel = math.prod(grid) if grid else 1
        max_block, max_node = _spec_widths(spec)
        self.edge_dim = int(edge_dim) if edge_dim is not None else max(grid_numel, max_block)
        self.node_dim = int(node_dim) if node_dim is not None else max_node
        if self.edge_dim < max(grid_numel, max_block):
            raise SpecError(f"edge_dim={self.edge_dim} is smaller than the kernel grid "
                            f"({grid_numel}) or the largest flatten block ({max_block})",
                            parameter="edge_dim")
        if self.node_dim < max_node:
            raise SpecError(f"node_dim={self.node_dim} is smaller than the largest per-neuron "
                            f"parameter block ({max_node})", parameter="node_dim")
        # where a scalar weight sits: the centre of the kernel grid
        self.centre = 0
        stride = 1
        for g in reversed(grid):
            self.centre += (g // 2) * stride
            stride *= g
        self._build()

    # ---------------------------------------------------------------- building
    def _const(self, value: float) -> int:
        """Column of a constant in the extended parameter matrix."""
        if value not in self._constants:
            self._constants.append(float(value))
        return self.spec.num_parameters + self._constants.index(float(value))

    def _build(self) -> None:
        """Compute every structure tensor of the graph, in dependency order
        (edges add the constants they need; the inverse needs everything)."""
        self._constants: list[float] = [0.0]
        self.layer_offsets, self.num_nodes = self._layer_offsets()
        self.node_categorical = self._node_categorical()
        self.node_gather, self.node_mask = self._node_slots()
        self.edge_index, self.edge_gather, self.edge_type = self._edges()
        self.num_edges = self.edge_index.shape[1]
        # parameters that index no neuron
        scalar = [torch.arange(*self.spec.offsets[p.name]) for p in self.spec.parameters
                  if p.role in ("scalar", "unused")]
        self.scalar_index = torch.cat(scalar) if scalar else torch.zeros(0, dtype=torch.long)
        self.num_scalars = len(self.scalar_index)
        self.constants = torch.tensor(self._constants, dtype=torch.float64)
        self._check_each_parameter_once()
        self._parts = self._inverse_parts()

    def _layer_offsets(self) -> tuple[dict[str, int], int]:
        """(first node of every layer, number of nodes): nodes are the
        layers' neurons, layer after layer."""
        offsets, n = {}, 0
        for layer in self.spec.layers:
            offsets[layer.name] = n
            n += layer.size
        return offsets, n

    def _node_categorical(self) -> dict[str, Tensor]:
        """The categorical node features of :data:`NODE_ATTRS`, ``[N]`` each."""
        spec = self.spec
        cat = {a: [] for a in NODE_ATTRS}
        for i, layer in enumerate(spec.layers):
            size = layer.size
            space = spec.space(layer.space)
            cat["node_type"].append(torch.full((size,), NODE_TYPES.index(layer.role)))
            cat["node_op"].append(torch.full((size,), vocabulary_id(LAYER_OPS, layer.op)))
            cat["node_act"].append(torch.full((size,), vocabulary_id(ACTIVATIONS, layer.activation)))
            cat["node_norm"].append(torch.full((size,), vocabulary_id(NORMS, layer.norm)))
            cat["node_depth"].append(torch.full((size,), layer.depth))
            pos = torch.arange(size) if not space.permutable else torch.full((size,), -1)
            cat["node_pos"].append(pos)
            cat["node_layer"].append(torch.full((size,), i))
        return {k: torch.cat(v).long() for k, v in cat.items()}

    def _node_slots(self) -> tuple[Tensor, Tensor]:
        """Where each node's per-neuron parameters (bias, norm scale ...) come
        from: ``node_gather [N, len(NODE_SLOTS) * node_dim]`` (columns of the
        extended parameter matrix) and ``node_mask [N, len(NODE_SLOTS)]``."""
        spec = self.spec
        width = len(NODE_SLOTS) * self.node_dim
        node_gather = torch.full((self.num_nodes, width), spec.num_parameters, dtype=torch.long)
        node_mask = torch.zeros(self.num_nodes, len(NODE_SLOTS), dtype=torch.bool)
        for p in spec.parameters:
            if p.role not in NODE_SLOTS:
                continue
            layer = spec.layer(p.layer)
            axis = [i for i, a in enumerate(p.axes) if a is not None]
            if len(axis) != 1:
                raise SpecError(f"per-neuron parameter {p.name!r} must index exactly one space")
            start = spec.offsets[p.name][0]
            idx = (torch.arange(p.numel) + start).reshape(p.shape).movedim(axis[0], 0)
            idx = idx.reshape(layer.size, -1)
            slot = NODE_SLOTS.index(p.role)
            first = self.layer_offsets[layer.name]
            rows = slice(first, first + layer.size)
            if node_mask[rows, slot].any():
                raise SpecError(f"layer {layer.name!r} has two parameters in slot {p.role!r}")
            node_gather[rows, slot * self.node_dim: slot * self.node_dim + idx.shape[1]] = idx
            node_mask[rows, slot] = True
        return node_gather, node_mask

    def _edges(self) -> tuple[Tensor, Tensor, Tensor]:
        """``edge_index [2, E]``, ``edge_gather [E, edge_dim]`` and
        ``edge_type [E]``: one edge per (layer input, neuron pair)."""
        srcs, dsts, gathers, types = [], [], [], []
        for layer in self.spec.layers:
            dst_off = self.layer_offsets[layer.name]
            for inp in layer.inputs:
                src_off = self.layer_offsets[self.spec.layer(inp.source).name]
                if inp.kind == "weight":
                    s, d, g, t = self._weight_edges(inp.parameter, src_off, dst_off)
                elif inp.kind == "depthwise":
                    s, d, g, t = self._depthwise_edges(inp.parameter, src_off, dst_off)
                else:
                    s, d, g, t = self._constant_edges(layer.size, inp.kind, inp.coefficient,
                                                      src_off, dst_off)
                srcs.append(s)
                dsts.append(d)
                gathers.append(g)
                types.append(torch.full((len(s),), t, dtype=torch.long))
        if not srcs:
            return (torch.zeros(2, 0, dtype=torch.long),
                    torch.zeros(0, self.edge_dim, dtype=torch.long),
                    torch.zeros(0, dtype=torch.long))
        return (torch.stack([torch.cat(srcs), torch.cat(dsts)]).long(), torch.cat(gathers),
                torch.cat(types))

    def _check_each_parameter_once(self) -> None:
        """Every parameter value must sit in exactly one place of
        ``[x | edge_attr | scalars]``, or the inverse would be ambiguous."""
        spec = self.spec
        P = spec.num_parameters
        layout = torch.cat([self.node_gather.reshape(-1), self.edge_gather.reshape(-1),
                            self.scalar_index])
        is_param = layout < P
        counts = torch.bincount(layout[is_param], minlength=P)
        if (counts != 1).any():
            bad = int(torch.nonzero(counts != 1)[0])
            name = next(q.name for q in spec.parameters if spec.offsets[q.name][0] <= bad
                        < spec.offsets[q.name][1])
            raise SpecError(f"parameter {name!r} appears {int(counts[bad])} times in the graph "
                            f"(must be exactly once); the spec's layers are inconsistent")

    def _inverse_parts(self) -> dict[str, dict[str, Tensor]]:
        """Per part of the graph: the gather index straight into params
        (constants fixed up after the gather, so no concatenated copy of
        params is needed), and the (parameter column, position) pairs of the
        inverse."""
        P = self.spec.num_parameters
        parts = {}
        for part, gather in (("x", self.node_gather), ("edge_attr", self.edge_gather)):
            flat = gather.reshape(-1)
            param_pos = torch.nonzero(flat < P).squeeze(1)
            const_pos = torch.nonzero(flat >= P).squeeze(1)
            parts[part] = {
                "gather": flat.clamp(max=max(P - 1, 0)),
                "const_pos": const_pos,
                "const_val": self.constants[flat[const_pos] - P] if len(const_pos) else
                torch.zeros(0),
                "cols": flat[param_pos],
                "pos": param_pos,
            }
        parts["scalars"] = {"cols": self.scalar_index, "pos": torch.arange(self.num_scalars)}
        return parts

    def _embed_kernel(self, idx: Tensor, kernel: tuple[int, ...], name: str) -> Tensor:
        """``idx [M, *kernel]`` -> ``[M, edge_dim]`` with the kernel centred."""
        grid = self.kernel_grid
        kernel = _padded_kernel(kernel, len(grid))
        if any(k > g for k, g in zip(kernel, grid, strict=True)):
            raise SpecError(f"the kernel {list(kernel)} of {name!r} does not fit the template's "
                            f"kernel grid {list(grid)}")
        m = idx.shape[0]
        out = torch.full((m, *grid), self.spec.num_parameters, dtype=torch.long)
        where = tuple(slice((g - k) // 2, (g - k) // 2 + k) for k, g in zip(kernel, grid, strict=True))
        out[(slice(None), *where)] = idx.reshape(m, *kernel)
        out = out.reshape(m, -1)
        return self._pad(out)

    def _pad(self, g: Tensor) -> Tensor:
        if g.shape[1] == self.edge_dim:
            return g
        pad = torch.full((g.shape[0], self.edge_dim - g.shape[1]), self.spec.num_parameters,
                         dtype=torch.long)
        return torch.cat([g, pad], 1)

    def _weight_edges(self, name: str, src_off: int, dst_off: int):
        p = self.spec.parameter(name)
        start = self.spec.offsets[name][0]
        n_out = self.spec.space(p.axes[0].space).size
        n_in = self.spec.space(p.axes[1].space).size
        block = p.axes[1].block
        kernel = tuple(p.shape[2:])
        idx = torch.arange(p.numel).reshape(p.shape) + start
        if block > 1:  # conv -> linear flatten: each edge carries a channel's block
            g = self._pad(idx.reshape(n_out * n_in, block))
            etype = EDGE_TYPES.index("flatten")
        elif kernel:
            g = self._embed_kernel(idx.reshape(n_out * n_in, *kernel), kernel, name)
            etype = EDGE_TYPES.index("conv")
        else:
            g = torch.full((n_out * n_in, self.edge_dim), self.spec.num_parameters, dtype=torch.long)
            g[:, self.centre] = idx.reshape(-1)
            etype = EDGE_TYPES.index("linear")
        src = torch.arange(n_in).repeat(n_out) + src_off
        dst = torch.arange(n_out).repeat_interleave(n_in) + dst_off
        return src, dst, g, etype

    def _constant_edges(self, size: int, kind: str, coefficient: float, src_off: int,
                        dst_off: int):
        """Neuron ``i`` of the source to neuron ``i`` of the layer, carrying a
        constant (a residual connection's coefficient, a norm's identity)."""
        g = torch.full((size, self.edge_dim), self.spec.num_parameters, dtype=torch.long)
        g[:, self.centre] = self._const(coefficient)
        return (torch.arange(size) + src_off, torch.arange(size) + dst_off, g,
                EDGE_TYPES.index(kind))

    def _depthwise_edges(self, name: str, src_off: int, dst_off: int):
        p = self.spec.parameter(name)
        start = self.spec.offsets[name][0]
        c = p.shape[0]
        kernel = tuple(p.shape[2:])
        idx = (torch.arange(p.numel).reshape(p.shape) + start).reshape(c, *kernel)
        g = self._embed_kernel(idx, kernel, name)
        ar = torch.arange(c)
        return ar + src_off, ar + dst_off, g, EDGE_TYPES.index("depthwise")

    # ------------------------------------------------------------- conversion
    def _check_params(self, params: Tensor) -> Tensor:
        if params.dim() == 1:
            params = params.unsqueeze(0)
        if params.dim() != 2 or params.shape[1] != self.spec.num_parameters:
            raise StateDictMismatchError(
                f"expected flat parameters of shape [B, {self.spec.num_parameters}] for this "
                f"architecture, got {list(params.shape)}", parameter="params"
            )
        if not params.is_floating_point():
            params = params.to(self.spec.dtype)
        return params

    def _values(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b = params.shape[0]
        device = params.device
        out = []
        for part, rows in (("x", self.num_nodes), ("edge_attr", self.num_edges)):
            info = self._parts[part]
            values = params.index_select(1, self._on(info["gather"], device))
            if len(info["const_pos"]):
                values[:, self._on(info["const_pos"], device)] = self._on(
                    info["const_val"], device).to(params.dtype)
            out.append(values.reshape(b * rows, -1))
        scalars = params.index_select(1, self._on(self.scalar_index, device))
        return out[0], out[1], scalars.reshape(-1)

    def _on(self, t: Tensor, device: torch.device) -> Tensor:
        """Template tensors are cached per device so GPU batches gather on GPU."""
        if t.device == device:
            return t
        key = (id(t), str(device))
        cache = self.__dict__.setdefault("_device_cache", {})
        if key not in cache:
            cache[key] = t.to(device)
        return cache[key]

    def to_data(self, params: Tensor) -> Data:
        """One checkpoint's flat vector ``[P]`` -> a graph."""
        params = self._check_params(params)
        if params.shape[0] != 1:
            raise StateDictMismatchError("to_data takes one flat vector; use to_batch for several",
                                         parameter="params")
        x, edge_attr, scalars = self._values(params)
        device = params.device
        data = Data(
            x=x,
            edge_index=self._on(self.edge_index, device).clone(),
            edge_attr=edge_attr,
            edge_type=self._on(self.edge_type, device).clone(),
            x_mask=self._on(self.node_mask, device).clone(),
            scalars=scalars,
            **{k: self._on(v, device).clone() for k, v in self.node_categorical.items()},
        )
        return data

    def to_batch(self, params: Tensor) -> Batch:
        """``[B, P]`` flat checkpoints -> one PyG :class:`Batch` of ``B`` graphs,
        by one gather; ``batch.get_example(i)`` and ``to_data_list()`` work."""
        params = self._check_params(params)
        b, n, e = params.shape[0], self.num_nodes, self.num_edges
        device = params.device
        x, edge_attr, scalars = self._values(params)
        graph_ids = torch.arange(b, device=device)
        node_off = graph_ids * n
        edge_index = (self._on(self.edge_index, device).unsqueeze(1)
                      + node_off.view(1, b, 1)).reshape(2, b * e)
        attrs = {k: self._on(v, device).repeat(b) for k, v in self.node_categorical.items()}
        tensors = dict(
            x=x,
            edge_index=edge_index,
            edge_attr=edge_attr,
            edge_type=self._on(self.edge_type, device).repeat(b),
            x_mask=self._on(self.node_mask, device).repeat(b, 1),
            scalars=scalars,
            batch=graph_ids.repeat_interleave(n),
            ptr=torch.arange(b + 1, device=device) * n,
            **attrs,
        )
        return self.wrap_batch(tensors, b)

    def wrap_batch(self, tensors: dict[str, Tensor], num_graphs: int) -> Batch:
        """A :class:`Batch` around already batched tensors of ``num_graphs``
        graphs of this template, with the bookkeeping that ``get_example`` /
        ``to_data_list`` need (:func:`wrap_graph_batch` with this template's
        sizes)."""
        steps = torch.arange(num_graphs + 1)
        return wrap_graph_batch(tensors, steps * self.num_nodes, steps * self.num_edges,
                                steps * self.num_scalars)

    def from_batch(self, batch: Data) -> Tensor:
        """Inverse of :meth:`to_batch` (and of a ``Batch.from_data_list`` of
        :meth:`to_data` graphs): ``[B, P]``, by one gather."""
        n, e, s = self.num_nodes, self.num_edges, self.num_scalars
        b = batch.x.shape[0] // n if n else int(getattr(batch, "num_graphs", 1))
        expect = {"x": (b * n, len(NODE_SLOTS) * self.node_dim), "edge_attr": (b * e, self.edge_dim)}
        for key, shape in expect.items():
            got = tuple(getattr(batch, key).shape)
            if got != shape:
                raise StateDictMismatchError(
                    f"graph attribute {key!r} has shape {list(got)}, this architecture's "
                    f"template expects {list(shape)}; is the graph of a different architecture?",
                    parameter="batch")
        scalars = getattr(batch, "scalars", None)
        if scalars is None:
            scalars = batch.x.new_zeros(0)
        if scalars.numel() != b * s:
            raise StateDictMismatchError(
                f"graph attribute 'scalars' has {scalars.numel()} values, expected {b * s}",
                parameter="batch")
        out = batch.x.new_empty(b, self.spec.num_parameters)
        for part, values in (("x", batch.x), ("edge_attr", batch.edge_attr), ("scalars", scalars)):
            info = self._parts[part]
            if len(info["cols"]):
                device = values.device
                out[:, self._on(info["cols"], device)] = values.reshape(b, -1)[
                    :, self._on(info["pos"], device)]
        return out

    def from_data(self, data: Data) -> Tensor:
        """Inverse of :meth:`to_data`: ``[P]``."""
        return self.from_batch(data)[0]

    # --------------------------------------------------------------- symmetry
    def node_permutation(self, perm) -> Tensor:
        """Node relabelling of a permutation: ``to_data(permuted).x ==
        to_data(original).x[node_permutation(perm)]``.

        Shapes:
            output: ``[N]``.
        """
        out = torch.arange(self.num_nodes)
        for layer in self.spec.layers:
            if layer.space in perm:
                off = self.layer_offsets[layer.name]
                out[off: off + layer.size] = perm[layer.space] + off
        return out

    # ----------------------------------------------------------------- sharing
    @classmethod
    def common(cls, specs: Sequence[WeightSpaceSpec]) -> list[GraphTemplate]:
        """Templates whose graphs batch together: one kernel grid, ``edge_dim``
        and ``node_dim`` for all ``specs``."""
        grids = [_spec_kernel_grid(s) for s in specs]
        rank = max((len(g) for g in grids), default=0)
        padded = [_padded_kernel(g, rank) for g in grids]
        grid = tuple(max(g[d] for g in padded) for d in range(rank))
        widths = [_spec_widths(s) for s in specs]
        edge_dim = max([math.prod(grid) if grid else 1] + [w[0] for w in widths])
        node_dim = max(w[1] for w in widths)
        return [cls(s, grid, edge_dim, node_dim) for s in specs]

    @classmethod
    def for_spec(cls, spec: WeightSpaceSpec, kernel_grid: Sequence[int] | None = None,
                 edge_dim: int | None = None, node_dim: int | None = None) -> GraphTemplate:
        """A cached template (one per architecture and settings)."""
        key = (spec.hash, tuple(kernel_grid) if kernel_grid is not None else None, edge_dim, node_dim)
        with _CACHE_LOCK:
            template = _CACHE.get(key)
            if template is None:
                template = cls(spec, kernel_grid, edge_dim, node_dim)
                if len(_CACHE) >= 64:
                    _CACHE.pop(next(iter(_CACHE)))
                _CACHE[key] = template
        return template

    def __repr__(self) -> str:
        return (f"GraphTemplate(nodes={self.num_nodes}, edges={self.num_edges}, "
                f"scalars={self.num_scalars}, edge_dim={self.edge_dim}, node_dim={self.node_dim}, "
                f"kernel_grid={list(self.kernel_grid)})")


_CACHE: dict[tuple, GraphTemplate] = {}
_CACHE_LOCK = Lock()

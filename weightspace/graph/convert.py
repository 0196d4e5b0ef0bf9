"""Convert state dicts to parameter graphs and back.

:func:`to_graph` / :func:`from_graph` handle one network; for many
checkpoints of one architecture use :func:`to_batch` (or a
:class:`~weightspace.graph.GraphTemplate` directly), which converts them all
with one gather.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from weightspace.graph.template import GraphTemplate
from weightspace.spec.containers import WeightSpaceSpec


def to_graph(state_dict: Mapping[str, Tensor], spec: WeightSpaceSpec, **template_options) -> Data:
    """The parameter graph of one network (schema: :mod:`weightspace.graph.schema`).

    Args:
        state_dict: the network's state dict (checked against ``spec``).
        spec: its :class:`~weightspace.WeightSpaceSpec`.
        **template_options: ``kernel_grid``, ``edge_dim``, ``node_dim`` of the
            :class:`GraphTemplate` (to batch with other architectures).
    """
    template = GraphTemplate.for_spec(spec, **template_options)
    return template.to_data(spec.flatten(state_dict))


def from_graph(data: Data, spec: WeightSpaceSpec, **template_options) -> dict[str, Tensor]:
    """The state dict of a graph made by :func:`to_graph` (exact, every dtype
    restored)."""
    template = GraphTemplate.for_spec(spec, **template_options)
    return spec.unflatten(template.from_data(data))


def to_batch(
    checkpoints: Tensor | Sequence[Mapping[str, Tensor]],
    spec: WeightSpaceSpec,
    **template_options,
) -> Batch:
    """Many checkpoints of one architecture -> one batched graph.

    Args:
        checkpoints: a ``[B, P]`` matrix of flat parameters
            (:meth:`WeightSpaceSpec.flatten`) or a list of state dicts.
    """
    template = GraphTemplate.for_spec(spec, **template_options)
    params = checkpoints if isinstance(checkpoints, Tensor) else spec.flatten_many(list(checkpoints))
    return template.to_batch(params)


def from_batch(batch: Data, spec: WeightSpaceSpec, **template_options) -> list[dict[str, Tensor]]:
    """Inverse of :func:`to_batch`: one state dict per graph."""
    template = GraphTemplate.for_spec(spec, **template_options)
    params = template.from_batch(batch)
    return [spec.unflatten(row) for row in params]


def graph_summary(data: Data) -> str:
    """One line per attribute: name, shape, dtype."""
    lines = []
    for key in sorted(data.keys()):
        value = data[key]
        if isinstance(value, Tensor):
            lines.append(f"  {key:<12} {str(list(value.shape)):<16} {str(value.dtype).replace('torch.', '')}")
    head = f"{type(data).__name__}: {data.num_nodes} nodes, {data.num_edges} edges"
    if isinstance(data, Batch):
        head += f", {data.num_graphs} graphs"
    return "\n".join([head, *lines])


def convert_checkpoints(
    paths,
    spec: WeightSpaceSpec,
    progress: bool = True,
    **template_options,
) -> tuple[Batch, GraphTemplate, list[str]]:
    """Load checkpoint files (safely: safetensors or ``weights_only`` pickles)
    and convert them all to one batched graph.

    Args:
        paths: files, directories or glob patterns
            (:func:`weightspace.io.expand_checkpoint_paths`).
        spec: the architecture every checkpoint must match.
        progress: show a tqdm bar while loading.

    Returns:
        ``(batch, template, sources)`` with one graph per file, in file order.

    Raises:
        weightspace.io.CheckpointError: a file is missing or unreadable.
        StateDictMismatchError: a checkpoint does not match ``spec`` (the
            message starts with the file).
    """
    from tqdm.auto import tqdm

    from weightspace.io import expand_checkpoint_paths, load_state_dict
    from weightspace.spec.errors import StateDictMismatchError

    files = expand_checkpoint_paths(paths)
    template = GraphTemplate.for_spec(spec, **template_options)
    params = torch.empty(len(files), spec.num_parameters, dtype=spec.dtype)
    for i, path in enumerate(tqdm(files, desc="loading checkpoints", unit="ckpt", disable=not progress)):
        state_dict = load_state_dict(path)
        try:
            params[i] = spec.flatten(state_dict)
        except StateDictMismatchError as err:
            raise StateDictMismatchError(f"{path}: {err}") from err
    return template.to_batch(params), template, [str(f) for f in files]


__all__ = ["convert_checkpoints", "from_batch", "from_graph", "graph_summary", "to_batch", "to_graph"]

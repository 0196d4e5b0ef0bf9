"""A file of parameter graphs: what ``weightspace convert`` writes.

The file is a ``torch.save`` of plain containers (dict, list, str, int and
tensors), so it loads with ``torch.load(path, weights_only=True)`` and never
runs code; plain PyTorch can read it without this package::

    {
      "format": "weightspace.graphs/1",
      "spec": "<WeightSpaceSpec JSON>",
      "template": {"kernel_grid": [...], "edge_dim": int, "node_dim": int},
      "sources": ["ckpt_000.safetensors", ...],     # one per graph
      "num_graphs": B,
      "graphs": {"x": ..., "edge_index": ..., "edge_attr": ..., ...}   # the batched graph
    }
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch_geometric.data import Batch

from weightspace.errors import WeightspaceError
from weightspace.graph.template import GraphTemplate
from weightspace.io import atomic_output_path
from weightspace.spec.containers import WeightSpaceSpec

FORMAT = "weightspace.graphs/1"


@dataclass(frozen=True)
class GraphFile:
    """The content of a graph file."""

    batch: Batch
    spec: WeightSpaceSpec
    template: GraphTemplate
    sources: tuple[str, ...]

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """The checkpoints back, exactly."""
        return [self.spec.unflatten(row) for row in self.template.from_batch(self.batch)]


def save_graphs(path: str | Path, batch: Batch, template: GraphTemplate, sources: list[str]) -> Path:
    """Write a batched graph atomically (a killed process leaves no partial file)."""
    payload = {
        "format": FORMAT,
        "spec": template.spec.to_json(),
        "template": {"kernel_grid": list(template.kernel_grid), "edge_dim": template.edge_dim,
                     "node_dim": template.node_dim},
        "sources": [str(s) for s in sources],
        "num_graphs": int(batch.num_graphs),
        "graphs": {k: v for k, v in batch.to_dict().items() if isinstance(v, torch.Tensor)},
    }
    with atomic_output_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_graphs(path: str | Path) -> GraphFile:
    """Read a file written by :func:`save_graphs` (``weights_only=True``)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise  # the CLI reports a missing file as such
    except Exception as err:
        raise WeightspaceError(f"{path}: not a readable weightspace graph file ({err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightspaceError(f"{path}: not a weightspace graph file (format {FORMAT!r} expected)")
    spec = WeightSpaceSpec.from_json(payload["spec"])
    options = payload["template"]
    template = GraphTemplate.for_spec(spec, tuple(options["kernel_grid"]), options["edge_dim"],
                                      options["node_dim"])
    batch = template.wrap_batch(payload["graphs"], int(payload["num_graphs"]))
    return GraphFile(batch, spec, template, tuple(payload["sources"]))

"""Metanetworks by name, for configuration files and the command line.

Every metanetwork is built as ``Model(template, out_dim, **options)``; an
entry of :data:`METANETWORKS` adds the options its name fixes (``nfn-np`` is
:class:`~weightspace.nn.nfn.NFN` with ``mode="np"``) and the input it reads:
``"graph"`` models take batches of any architecture the graph can express
(mixed batches included), ``"flat"`` models are built for one architecture's
flat parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.graph.template import GraphTemplate
from weightspace.nn.deepsets import EdgeDeepSets
from weightspace.nn.dwsnet import DWSNet
from weightspace.nn.flat_mlp import FlatMLP
from weightspace.nn.gmn import GMN
from weightspace.nn.nfn import NFN
from weightspace.nn.statnn import StatNN
from weightspace.nn.transformer import GraphTransformer
from weightspace.registry import Entry, Registry

#: :attr:`Metanetwork.input` values.
INPUT_KINDS = ("graph", "flat")

# The arguments every metanetwork takes first; the rest are its options.
_DATA_ARGUMENTS = ("template", "out_dim")


@dataclass(frozen=True)
class Metanetwork(Entry):
    """A metanetwork class and how a name builds it.

    Attributes:
        fixed: options the name fixes (``{"mode": "np"}``).
        input: ``"graph"`` (parameter graphs of any architecture) or
            ``"flat"`` (one architecture's flat parameters).
    """

    fixed: Mapping[str, Any] = field(default_factory=dict)
    input: str = "graph"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_field("input", INPUT_KINDS)

    def arguments(self) -> tuple[str, ...]:
        """The keyword arguments of the class besides the template and ``out_dim``."""
        return tuple(name for name in self.parameter_names() if name not in _DATA_ARGUMENTS)


METANETWORKS: Registry[Metanetwork] = Registry("metanetwork", (
    Metanetwork("gmn", GMN, "graph metanetwork: message passing on the parameter graph",
                reference="Lim et al. 2024, Graph Metanetworks, ICLR 2024"),
    Metanetwork("transformer", GraphTransformer,
                "relational graph transformer along the parameter graph's edges",
                reference="Kofinas et al. 2024, Graph Neural Networks for Learning Equivariant "
                          "Representations of Neural Networks, ICLR 2024"),
    Metanetwork("deepsets", EdgeDeepSets, "DeepSets over the parameter graph's edges",
                reference="Zaheer et al. 2017, Deep Sets, NeurIPS 2017"),
    Metanetwork("nfn-np", NFN, "neural functional network, NP (all neurons permutable)",
                reference="Zhou et al. 2023, Permutation Equivariant Neural Functionals, "
                          "NeurIPS 2023", fixed={"mode": "np"}, input="flat"),
    Metanetwork("nfn-hnp", NFN, "neural functional network, HNP (input/output neurons fixed)",
                reference="Zhou et al. 2023, Permutation Equivariant Neural Functionals, "
                          "NeurIPS 2023", fixed={"mode": "hnp"}, input="flat"),
    Metanetwork("dwsnet", DWSNet, "deep weight-space network for MLPs",
                reference="Navon et al. 2023, Equivariant Architectures for Learning in Deep "
                          "Weight Spaces, ICML 2023", input="flat"),
    Metanetwork("statnn", StatNN, "per-layer weight statistics and an MLP",
                reference="Unterthiner et al. 2020, Predicting Neural Network Accuracy from "
                          "Weights", input="flat"),
    Metanetwork("flat-mlp", FlatMLP, "MLP on the flattened parameters (not invariant; a baseline)",
                input="flat"),
), parameter="model")
"""Metanetworks by the name of :attr:`~weightspace.train.TrainConfig.model`."""


def metanetwork_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``.

    Raises:
        WeightspaceError: an unknown name (the message lists the choices).
    """
    return METANETWORKS.get(name).load()


def is_graph_model(name: str) -> bool:
    """Whether ``name`` takes parameter graphs of any architecture (else one
    architecture's flat parameters)."""
    return METANETWORKS.get(name).input == "graph"


def build_metanetwork(name: str, template: GraphTemplate, out_dim: int,
                      model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """``METANETWORKS[name]`` built for ``template``'s graphs with ``out_dim``
    outputs and ``model_args`` (``hidden``, ``num_layers``, ``head`` …).

    Raises:
        WeightspaceError: an unknown name, or an argument the model does not
            take (the message lists the model's arguments).
    """
    entry = METANETWORKS.get(name)
    kwargs = dict(entry.fixed)
    kwargs.update(model_args or {})
    try:
        return entry(template, out_dim, **kwargs)
    except TypeError as exc:
        raise WeightspaceError(f"cannot build {name!r} with {kwargs}: {exc}; its arguments are "
                               f"{list(entry.arguments())}", parameter="model_args") from exc


def count_trainable_parameters(model: nn.Module) -> int:
    """Trainable values of a module (entries of its parameters that require
    a gradient), e.g. a metanetwork's size; for the values of an
    architecture from its spec, see :func:`weightspace.prune.count_spec_parameters`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["METANETWORKS", "Metanetwork", "build_metanetwork", "count_trainable_parameters",
           "is_graph_model", "metanetwork_class"]

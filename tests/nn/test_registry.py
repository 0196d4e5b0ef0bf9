"""Metanetworks by name: every registered model builds for a SIREN template,
takes graphs and flat parameters alike, and bad names/arguments are clear errors."""

from __future__ import annotations

import pytest
import torch

from weightspace import GraphTemplate
from weightspace.nn import (
    METANETWORKS,
    as_parameters,
    build_metanetwork,
    count_trainable_parameters,
    is_graph_model,
)

EQUIVARIANT = {"gmn", "transformer", "nfn-np", "nfn-hnp", "dwsnet", "flat-mlp"}


@pytest.mark.parametrize("name", sorted(METANETWORKS))
def test_every_model_builds_and_runs(siren, name):
    spec, params = siren
    template = GraphTemplate.for_spec(spec)
    torch.manual_seed(0)
    model = build_metanetwork(name, template, 4).double().eval()
    assert count_trainable_parameters(model) > 0
    out = model(params)
    assert out.shape == (len(params), 4)
    assert torch.allclose(model(template.to_batch(params)), out, atol=1e-10)
    assert isinstance(is_graph_model(name), bool)


@pytest.mark.parametrize("name", sorted(EQUIVARIANT))
def test_equivariant_heads_return_networks(siren, name):
    spec, params = siren
    template = GraphTemplate.for_spec(spec)
    model = build_metanetwork(name, template, 1, {"head": "equivariant"}).double().eval()
    assert as_parameters(model(params), template).shape == params.shape


@pytest.mark.parametrize("name", sorted(set(METANETWORKS) - EQUIVARIANT))
def test_invariant_only_models_refuse_the_equivariant_head(siren, name):
    template = GraphTemplate.for_spec(siren[0])
    with pytest.raises(ValueError, match="head"):
        build_metanetwork(name, template, 1, {"head": "equivariant"})


def test_unknown_names_and_arguments_are_clear_errors(siren):
    template = GraphTemplate.for_spec(siren[0])
    with pytest.raises(ValueError, match="unknown metanetwork 'gnn'.*gmn"):
        build_metanetwork("gnn", template, 2)
    with pytest.raises(ValueError, match="its arguments are .*hidden"):
        build_metanetwork("gmn", template, 2, {"hiden": 3})

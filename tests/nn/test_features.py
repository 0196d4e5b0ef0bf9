"""WeightSpaceFeatures: the one container NFN and DWSNet carry between layers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import weightspace
from weightspace import GraphTemplate
from weightspace.errors import WeightspaceError
from weightspace.models.mlp import MLP
from weightspace.nn import DWSNet
from weightspace.nn.dwsnet import DWSLayer, MLPWeightSpace
from weightspace.nn.features import WeightSpaceFeatures
from weightspace.nn.nfn import HNPLinear, LayerChain


def _features(layers: int = 3) -> WeightSpaceFeatures:
    weights = [torch.full((2, 1, 3, 3), float(i)) for i in range(layers)]
    biases = [torch.full((2, 1, 3), 10.0 + i) for i in range(layers)]
    return WeightSpaceFeatures(weights, biases)


def test_orders_and_their_inverses():
    features = _features()
    assert len(features) == 3
    assert isinstance(features.weights, tuple) and isinstance(features.biases, tuple)
    by_layer = [float(t.flatten()[0]) for t in features]
    assert by_layer == [0.0, 10.0, 1.0, 11.0, 2.0, 12.0]
    pieces = [float(t.flatten()[0]) for t in features.pieces()]
    assert pieces == [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
    for rebuilt in (WeightSpaceFeatures.from_layers(list(features)),
                    WeightSpaceFeatures.from_pieces(list(features.pieces()))):
        assert all(a is b for a, b in zip(rebuilt, features, strict=True))


def test_map_applies_to_every_tensor_and_the_container_is_frozen():
    features = _features()
    doubled = features.map(lambda t: 2 * t)
    assert all(torch.equal(d, 2 * t) for d, t in zip(doubled, features, strict=True))
    with pytest.raises(dataclasses.FrozenInstanceError):
        features.weights = ()  # type: ignore[misc]


def test_a_bias_per_weight_is_required():
    with pytest.raises(WeightspaceError, match="one bias per weight") as info:
        WeightSpaceFeatures((torch.zeros(1),), ())
    assert info.value.parameter == "biases"
    with pytest.raises(WeightspaceError, match="even number") as info:
        WeightSpaceFeatures.from_layers([torch.zeros(1)] * 3)
    assert info.value.parameter == "tensors"


def test_nfn_and_dwsnet_layers_both_take_and_give_the_container():
    spec = weightspace.trace(MLP(3, (5, 4), 2), torch.zeros(1, 3))
    params = torch.randn(2, spec.num_parameters)
    chain = LayerChain.from_spec(spec)
    nfn_out = HNPLinear(chain, 1, 4)(chain.features(params))
    space = MLPWeightSpace.from_spec(spec)
    dws_out = DWSLayer(space, 1, 4)(space.to_features(params))
    for out in (nfn_out, dws_out):
        assert isinstance(out, WeightSpaceFeatures) and len(out) == 3
    assert nfn_out.weights[1].shape == (2, 4, 4, 5)  # [B, C, n_out, n_in]
    assert dws_out.weights[1].shape == (2, 4, 5, 4)  # [B, out, in, C]: both hidden


def test_unsupported_architecture_names_the_spec_argument():
    spec = weightspace.trace(torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4),
                                                 torch.nn.Linear(4, 2)), torch.zeros(1, 3))
    with pytest.raises(WeightspaceError, match="plain MLPs") as info:
        DWSNet(GraphTemplate.for_spec(spec), 2)
    assert info.value.parameter == "spec"

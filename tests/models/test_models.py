"""Built-in model families: construction, output shapes, fx-traceability, registry."""

from __future__ import annotations

import pytest
import torch
import torch.fx
from torch import nn

from weightspace.models import (
    BUILTIN_MODELS,
    MLP,
    SIREN,
    VGG,
    BasicBlock,
    ResNet,
    Sine,
    SmallCNN,
    build_model,
    default_input_shape,
    make_activation,
    resnet20,
    vgg11,
)
from weightspace.models.activations import ACTIVATION_NAMES

# (family name, constructor kwargs, expected number of outputs)
CONFIGS: list[tuple[str, dict, int]] = [
    *[("mlp", {}, 10)],
    *[("mlp", {"activation": name}, 10) for name in ACTIVATION_NAMES],
    ("mlp", {"norm": "batch", "dropout": 0.1}, 10),
    ("mlp", {"norm": "layer", "hidden": (32,), "out_features": 3, "bias": False}, 3),
    ("mlp", {"hidden": (), "in_features": 5}, 10),
    ("siren", {}, 1),
    ("siren", {"in_features": 3, "hidden": (16, 16, 16), "out_features": 3, "w0": 10.0}, 3),
    ("cnn", {}, 10),
    ("cnn", {"channels": (8, 12), "activation": "gelu", "dropout": 0.5, "in_channels": 3}, 10),
    ("cnn", {"kernel_size": 5, "stride": 1, "num_classes": 4}, 4),
    *[
        ("resnet20", {"norm": norm, "width": width}, 10)
        for norm in ("batch", "layer", "group", "none")
        for width in (1, 2)
    ],
    ("resnet20", {"in_channels": 3, "num_classes": 7}, 7),
    ("vgg", {}, 10),
    ("vgg", {"batch_norm": False, "width": 2, "activation": "tanh"}, 10),
    ("vgg", {"cfg": (8, 8, "M", 16), "input_size": 12, "in_channels": 3, "num_classes": 5}, 5),
]


def _config_id(config: tuple[str, dict, int]) -> str:
    name, kwargs, _ = config
    return name + "".join(f"-{key}={value}" for key, value in kwargs.items())


@pytest.mark.parametrize("config", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_forward_shape_and_fx_trace(config: tuple[str, dict, int]) -> None:
    name, kwargs, num_outputs = config
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    shape = default_input_shape(name, **kwargs)
    x = torch.randn(shape)

    with torch.no_grad():
        expected = model(x)
        traced = torch.fx.symbolic_trace(model)
        actual = traced(x)

    assert expected.shape == (shape[0], num_outputs)
    assert torch.isfinite(expected).all()
    assert torch.equal(actual, expected)


def test_train_mode_forward_with_batch() -> None:
    # BatchNorm needs more than one sample per channel in train mode.
    for name in BUILTIN_MODELS:
        model = build_model(name).train()
        shape = (4, *default_input_shape(name)[1:])
        assert model(torch.randn(shape)).shape[0] == 4


def test_siren_parameter_count_and_init() -> None:
    model = SIREN(2, (32, 32), 1)
    assert sum(p.numel() for p in model.parameters()) == 1185
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[0].weight.abs().max() <= 1 / 2
    bound = (6 / 32) ** 0.5 / 30.0
    assert all(layer.weight.abs().max() <= bound for layer in linears[1:])
    # w0 is a hyperparameter, not a weight.
    assert all("w0" not in key for key in model.state_dict())


def test_siren_computes_sine_of_scaled_linear() -> None:
    model = SIREN(2, (4,), 1, w0=2.0, w0_initial=3.0)
    x = torch.randn(5, 2)
    first, last = model.net[0], model.net[2]
    expected = last(torch.sin(3.0 * first(x)))
    assert torch.allclose(model(x), expected)
    model = SIREN(2, (4, 4), 1, w0=2.0, w0_initial=3.0)
    assert [m.w0 for m in model.modules() if isinstance(m, Sine)] == [3.0, 2.0]


def test_sine_w0_is_a_float_attribute() -> None:
    sine = Sine(w0=2)
    assert isinstance(sine.w0, float)
    assert list(sine.buffers()) == [] and list(sine.parameters()) == []
    assert torch.allclose(sine(torch.tensor([0.25])), torch.sin(torch.tensor([0.5])))


def test_make_activation_names() -> None:
    for name in ACTIVATION_NAMES:
        assert isinstance(make_activation(name), nn.Module)
    # Fresh module on every call: shared modules would merge traced nodes.
    assert make_activation("relu") is not make_activation("relu")
    assert isinstance(make_activation("sin"), Sine)
    assert isinstance(make_activation("identity"), nn.Identity)
    with pytest.raises(ValueError, match="Unknown activation 'swish'.*relu.*sin.*identity"):
        make_activation("swish")


def test_mlp_layout() -> None:
    model = MLP(64, (32, 16), 10, norm="batch")
    kinds = [type(m) for m in model.layers]
    assert kinds == [
        nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout,
        nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout,
        nn.Linear,
    ]  # fmt: skip
    # Keys do not depend on the dropout rate.
    assert MLP(dropout=0.0).state_dict().keys() == MLP(dropout=0.3).state_dict().keys()
    assert all(p.bias is None for p in MLP(bias=False).modules() if isinstance(p, nn.Linear))
    with pytest.raises(ValueError, match="norm 'group'"):
        MLP(norm="group")


def test_small_cnn_spatial_sizes_on_digits() -> None:
    model = SmallCNN()
    x = torch.randn(1, 1, 8, 8)
    sizes = [x.shape[-1]]
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, nn.Conv2d):
            sizes.append(x.shape[-1])
    assert sizes == [8, 4, 2, 1]
    assert model.classifier.in_features == 16


def test_resnet_structure() -> None:
    model = resnet20()
    blocks = [m for m in model.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 9
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    # 1 stem + 2 per block + 2 projection shortcuts = 21 convolutions.
    assert len(convs) == 21
    assert all(conv.bias is None for conv in convs)
    assert model.fc.in_features == 64
    projections = [b for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert len(projections) == 2

    wide = resnet20(width=2, norm="none")
    assert wide.fc.in_features == 128
    assert all(m.bias is not None for m in wide.modules() if isinstance(m, nn.Conv2d))
    assert not any(isinstance(m, nn.BatchNorm2d | nn.GroupNorm) for m in wide.modules())

    layer_norm = resnet20(norm="layer")
    groups = {m.num_groups for m in layer_norm.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {1}
    groups = {m.num_groups for m in resnet20(norm="group").modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {4}

    assert len(list(ResNet(num_blocks=(1, 1, 1)).modules())) < len(list(model.modules()))
    with pytest.raises(ValueError, match="norm 'instance'.*batch, layer, group, none"):
        ResNet(norm="instance")
    with pytest.raises(ValueError, match="num_blocks"):
        ResNet(num_blocks=(3, 3))


def test_vgg_keeps_spatial_extent_in_flatten() -> None:
    model = VGG(input_size=16)  # three max pools: 16 -> 2
    assert model.classifier[0].in_features == 64 * 2 * 2
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())
    with pytest.raises(ValueError, match="input_size=4 is too small"):
        VGG(input_size=4)


def test_vgg11() -> None:
    model = vgg11().eval()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert len([m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]) == 8
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x))
    half = vgg11(width=2, batch_norm=False)
    assert [c.out_channels for c in half.modules() if isinstance(c, nn.Conv2d)][-1] == 1024


def test_registry_contents() -> None:
    assert set(BUILTIN_MODELS) == {"mlp", "siren", "cnn", "resnet20", "vgg", "wildcnn", "tf_cnn",
                                   "inr_siren", "cnn_park", "modelzoo_cnn"}
    for name, family in BUILTIN_MODELS.items():
        assert family.name == name and family.description
    assert default_input_shape("mlp") == (1, 64)
    assert default_input_shape("mlp", in_features=7) == (1, 7)
    assert default_input_shape("siren") == (1, 2)
    assert default_input_shape("cnn", in_channels=3) == (1, 3, 8, 8)
    assert default_input_shape("resnet20") == (1, 1, 8, 8)
    assert default_input_shape("vgg", in_channels=3, input_size=32) == (1, 3, 32, 32)
    assert isinstance(build_model("resnet20", width=2), ResNet)


def test_registry_unknown_name() -> None:
    with pytest.raises(ValueError, match="Unknown model family 'resnet18'.*mlp, siren, cnn"):
        build_model("resnet18")
    with pytest.raises(ValueError, match="Unknown model family"):
        default_input_shape("transformer")


def test_registry_bad_argument() -> None:
    with pytest.raises(ValueError) as info:
        build_model("cnn", chanels=(8, 8))
    message = str(info.value)
    assert "'cnn'" in message and "'chanels'" in message
    assert "in_channels" in message and "channels" in message and "dropout" in message
    assert isinstance(info.value.__cause__, TypeError)

    # resnet20 has no num_blocks argument: the message lists what it accepts.
    with pytest.raises(ValueError, match="'resnet20'.*'num_blocks'.*width, norm"):
        default_input_shape("resnet20", num_blocks=(1, 1, 1))


def test_registry_does_not_mask_constructor_errors() -> None:
    # A valid argument name with a bad value keeps the constructor's own error.
    with pytest.raises(ValueError, match="Unknown ResNet norm"):
        build_model("resnet20", norm="instance")

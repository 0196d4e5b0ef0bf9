"""The small CNNs of the Model Zoos data set, rebuilt with their parameter keys.

Reference: Schürholt et al. 2022, "Model Zoos: A Dataset of Diverse
Populations of Neural Network Models" (NeurIPS 2022 Datasets and Benchmarks),
and its model code (``ModelZoos/ModelZooDataset``,
``code/model_definitions/def_net.py``, classes ``CNN``, ``CNN2``, ``CNN3``
chosen by the config's ``model::type``). Each is one ``nn.ModuleList``
``module_list`` run in order; a block is ``Conv2d -> MaxPool2d(2, 2) ->
activation -> [Dropout]`` (pooling *before* the activation), then
``Flatten -> Linear -> activation -> [Dropout] -> Linear(20, 10)``:

=========  ======  =====================================================
variant    input   convolutions (out channels, kernel), hidden linear
=========  ======  =====================================================
``CNN``    28x28   (8, 5) pool, (6, 5) pool, (4, 2); 36 -> 20 -> 10
``CNN2``   28x28   (6, 5) pool, (9, 5) pool, (6, 2); 54 -> 20 -> 10
``CNN3``   32x32   (16, 3) pool, (32, 3) pool, (15, 3) pool; 60 -> 20 -> 10
=========  ======  =====================================================

In the original, ``CNN`` and ``CNN2`` add their ``Dropout`` modules only when
``model::dropout > 0``, which shifts the ``module_list.<i>`` indices;
:class:`ModelZooCNN` always has them (no parameters, like every weightspace
family), so its keys are those of a dropout > 0 checkpoint and a dropout = 0
checkpoint is re-keyed in layer order (see
:func:`weightspace.zoo.importers.read_model_zoos`).
"""

from __future__ import annotations

from torch import nn

from weightspace.errors import WeightspaceError
from weightspace.models.activations import make_activation

# model::nlin -> weightspace activation name.
ZOO_NONLINEARITIES: dict[str, str] = {
    "leakyrelu": "leaky_relu",
    "relu": "relu",
    "tanh": "tanh",
    "sigmoid": "sigmoid",
    "silu": "silu",
    "gelu": "gelu",
}

# variant -> (input size, [(out channels, kernel, pooled)], flattened features)
ZOO_VARIANTS: dict[str, tuple[int, tuple[tuple[int, int, bool], ...], int]] = {
    "CNN": (28, ((8, 5, True), (6, 5, True), (4, 2, False)), 3 * 3 * 4),
    "CNN2": (28, ((6, 5, True), (9, 5, True), (6, 2, False)), 3 * 3 * 6),
    "CNN3": (32, ((16, 3, True), (32, 3, True), (15, 3, True)), 15 * 2 * 2),
}


class ModelZooCNN(nn.Module):
    """A Model Zoos CNN (``CNN``, ``CNN2`` or ``CNN3``), eval-time identical
    to the original, with its ``module_list.<i>`` parameter keys.

    Args:
        variant: ``"CNN"``, ``"CNN2"`` or ``"CNN3"`` (the config's ``model::type``).
        channels_in: input channels (``model::channels_in``).
        nlin: ``leakyrelu, relu, tanh, sigmoid, silu, gelu`` (``model::nlin``).
        dropout: dropout probability (``model::dropout``); the modules are
            present for every value.

    Shapes:
        - input: ``(N, channels_in, 28, 28)`` (``CNN3``: ``32, 32``).
        - output: ``(N, 10)``.
    """

    def __init__(
        self,
        variant: str = "CNN",
        channels_in: int = 1,
        nlin: str = "tanh",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if variant not in ZOO_VARIANTS:
            raise WeightspaceError(f"ModelZooCNN variant {variant!r} is not one of "
                             f"{', '.join(ZOO_VARIANTS)}.")
        if nlin not in ZOO_NONLINEARITIES:
            raise WeightspaceError(f"ModelZooCNN nlin {nlin!r} is not one of "
                             f"{', '.join(ZOO_NONLINEARITIES)}.")
        if not 0.0 <= dropout < 1.0:
            raise WeightspaceError(f"ModelZooCNN dropout must be in [0, 1), got {dropout!r}.")
        self.variant = variant
        self.input_size, convs, flat = ZOO_VARIANTS[variant]
        act = ZOO_NONLINEARITIES[nlin]
        modules: list[nn.Module] = []
        width = int(channels_in)
        for c, k, pooled in convs:
            modules.append(nn.Conv2d(width, c, k))
            if pooled:
                modules.append(nn.MaxPool2d(2, 2))
            modules.append(make_activation(act))
            if pooled or variant == "CNN3":
                modules.append(nn.Dropout(dropout))
            width = c
        modules += [nn.Flatten(), nn.Linear(flat, 20), make_activation(act), nn.Dropout(dropout),
                    nn.Linear(20, 10)]
        self.module_list = nn.ModuleList(modules)

    def forward(self, x):
        for layer in self.module_list:
            x = layer(x)
        return x

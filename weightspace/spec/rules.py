"""Tracing rules: how each layer and function acts on neuron spaces.

A *module rule* handles one leaf module type (``nn.Linear``, ``nn.Conv2d`` …)
and a *function rule* one function or tensor method (``torch.relu``,
``operator.add``, ``Tensor.flatten`` …). A rule receives the
:class:`~weightspace.spec.context.TraceContext`, the fx node and the abstract
values of its arguments, and returns the abstract value of the result.

To support a layer of your own, register a rule::

    from weightspace.spec import register_module_rule
    from weightspace.spec.rules import elementwise

    class Swish(nn.Module):
        def __init__(self):
            super().__init__()
            self.beta = nn.Parameter(torch.ones(()))   # a parameter: needs a rule
        def forward(self, x):
            return x * torch.sigmoid(self.beta * x)

    register_module_rule(Swish, elementwise("swish"))

Modules *without* parameters or buffers need no rule: the tracer steps into
their ``forward`` and applies the function rules there.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from torch import fx, nn

from weightspace.spec.context import Const, TraceContext, Value, where
from weightspace.spec.errors import TraceError, UnsupportedLayerError

ModuleRule = Callable[[TraceContext, fx.Node, nn.Module, list, dict], Any]
FunctionRule = Callable[[TraceContext, fx.Node, list, dict], Any]

_MODULE_RULES: dict[type, ModuleRule] = {}
_FUNCTION_RULES: dict[str, FunctionRule] = {}

# Functions are looked up by name so that ``torch.relu``, ``F.relu``,
# ``Tensor.relu`` and ``operator.add`` / ``torch.add`` share one rule; only
# functions defined by torch or the operator module are matched this way.
_TRUSTED_MODULES = ("torch", "operator", "_operator", "builtins", "math")


def register_module_rule(module_type: type, rule: ModuleRule) -> None:
    """Register (or replace) the tracing rule of a leaf module type.

    Subclasses of ``module_type`` use the rule too unless they have their own.
    """
    if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
        raise TypeError(f"register_module_rule expects an nn.Module subclass, got {module_type!r}")
    _MODULE_RULES[module_type] = rule


def register_function_rule(function: Callable | str, rule: FunctionRule) -> None:
    """Register (or replace) the rule of a function or tensor method, by the
    function object or its name (``"relu"`` covers torch.relu, F.relu and
    Tensor.relu)."""
    name = function if isinstance(function, str) else _function_name(function)
    _FUNCTION_RULES[name] = rule


def module_rule_for(module: nn.Module) -> ModuleRule | None:
    for cls in type(module).__mro__:
        if cls in _MODULE_RULES:
            return _MODULE_RULES[cls]
    return None


def _function_name(fn: Any) -> str:
    name = getattr(fn, "__name__", str(fn))
    return name.lstrip("_") if name.startswith("_") and not name.startswith("__") else name


def function_rule_for(node: fx.Node) -> FunctionRule | None:
    if node.op == "call_method":
        return _FUNCTION_RULES.get(str(node.target))
    fn = node.target
    module = getattr(fn, "__module__", None) or ""
    if module.split(".")[0] not in _TRUSTED_MODULES and not isinstance(fn, type(len)):
        return None
    return _FUNCTION_RULES.get(_function_name(fn))


# ====================================================================== helpers
def tensor_args(node: fx.Node, args: list) -> list[Value]:
    return [a for a in args if isinstance(a, Value)]


def first_tensor(node: fx.Node, args: list) -> Value:
    for a in args:
        if isinstance(a, Value):
            return a
    raise TraceError(f"{where(node)}: expected a tensor argument")


def _spatial(shape: tuple[int, ...], dim: int) -> tuple[int, ...]:
    return tuple(s for i, s in enumerate(shape) if i not in (0, dim))


def _need_channels_first(ctx: TraceContext, node: fx.Node, x: Value, what: str) -> None:
    ctx.resolve_dim(x, 1)
    if x.dim != 1 or x.block != 1:
        raise TraceError(
            f"{where(node)}: {what} expects the neurons on axis 1 of an unflattened tensor, "
            f"but they are on axis {x.dim} with {x.block} entries per neuron"
        )


# Which symmetries an elementwise function commutes with.
# scale: f(a·x) = a·f(x) for a > 0;  sign: f(−x) = −f(x).
ACTIVATIONS: dict[str, tuple[str, ...]] = {
    "relu": ("scale",),
    "leaky_relu": ("scale",),
    "identity": ("scale", "sign"),
    "tanh": ("sign",),
    "sin": ("sign",),
    "hardtanh": ("sign",),
    "softsign": ("sign",),
    "sigmoid": (),
    "gelu": (),
    "silu": (),
    "elu": (),
    "selu": (),
    "celu": (),
    "softplus": (),
    "mish": (),
    "relu6": (),
    "hardswish": (),
    "hardsigmoid": (),
    "softmax": (),
    "log_softmax": (),
    "cos": (),
    "exp": (),
}


def elementwise(name: str, kinds: tuple[str, ...] | None = None, activation: bool = True):
    """A rule for an elementwise (per-neuron) operation.

    Args:
        name: recorded as the layer's activation when ``activation``.
        kinds: symmetries it commutes with (default: from :data:`ACTIVATIONS`,
            else none).
    """
    commutes = ACTIVATIONS.get(name, ()) if kinds is None else kinds

    def rule(ctx: TraceContext, node: fx.Node, *rest) -> Value:
        args = rest[-2]
        x = first_tensor(node, args)
        if activation:
            ctx.set_activation(x, name)
        return x.replace(shape=ctx.shape(node), fresh=False, classes=ctx.passthrough(x, commutes))

    return rule


def identity_rule(ctx: TraceContext, node: fx.Node, *rest) -> Value:
    x = first_tensor(node, rest[-2])
    return x.replace(shape=ctx.shape(node))


# ==================================================================== weights
def linear_rule(ctx: TraceContext, node: fx.Node, m: nn.Linear, args: list, kwargs: dict) -> Value:
    path = str(node.target)
    ctx.call_module_once(path)
    x = first_tensor(node, args)
    ctx.resolve_dim(x, -1)
    ctx.use(x)
    if x.dim != x.rank - 1:
        raise TraceError(
            f"{where(node)}: nn.Linear acts on the last axis, but the neurons of its input are on "
            f"axis {x.dim} of a tensor of shape {list(x.shape)}; flatten or permute first"
        )
    in_size = ctx.space_size(x.space)
    if in_size * x.block != m.in_features:
        raise TraceError(
            f"{where(node)}: nn.Linear expects {m.in_features} input features, "
            f"the traced input has {in_size}×{x.block}"
        )
    out_space = ctx.new_space(m.out_features, path)
    weight = f"{path}.weight"
    layer = ctx.new_layer(path, out_space, "linear", [(x.layer, "weight", weight, 1.0)])
    ctx.add_parameter(path, "weight", [(out_space, 1), (x.space, x.block)], "weight", layer)
    rows = [(weight, 0)]
    if m.bias is not None:
        rows.append((ctx.add_parameter(path, "bias", [(out_space, 1)], "bias", layer), 0))
    ctx.consume(x, [(weight, 1)])
    classes = ctx.new_producer(out_space, rows)
    shape = ctx.shape(node)
    return Value(shape, out_space, len(shape) - 1, 1, layer, True, classes)


def conv_rule(ctx: TraceContext, node: fx.Node, m: nn.modules.conv._ConvNd, args: list, kwargs: dict) -> Value:
    path = str(node.target)
    ctx.call_module_once(path)
    x = first_tensor(node, args)
    _need_channels_first(ctx, node, x, type(m).__name__)
    ctx.use(x)
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        raise UnsupportedLayerError(
            f"{where(node)}: transposed convolutions are not supported yet; register a rule with "
            f"weightspace.register_module_rule({type(m).__name__}, rule)"
        )
    nd = len(m.kernel_size)
    in_size = ctx.space_size(x.space)
    if in_size != m.in_channels:
        raise TraceError(f"{where(node)}: conv expects {m.in_channels} channels, got {in_size}")
    weight = f"{path}.weight"
    shape = ctx.shape(node)
    kernel = tuple(int(k) for k in m.kernel_size)
    kernel_axes = [None] * nd
    if m.groups == 1:
        out_space = ctx.new_space(m.out_channels, path)
        layer = ctx.new_layer(path, out_space, f"conv{nd}d", [(x.layer, "weight", weight, 1.0)],
                              kernel, _spatial(shape, 1))
        ctx.add_parameter(path, "weight", [(out_space, 1), (x.space, 1), *kernel_axes], "weight", layer)
        ctx.consume(x, [(weight, 1)])
    elif m.groups == m.in_channels == m.out_channels:
        # depthwise: output channel c reads only input channel c, so the two
        # spaces are one and every channel has one kernel (one edge c -> c)
        out_space = x.space
        layer = ctx.new_layer(path, out_space, f"depthwise_conv{nd}d",
                              [(x.layer, "depthwise", weight, 1.0)], kernel, _spatial(shape, 1))
        ctx.add_parameter(path, "weight", [(out_space, 1), None, *kernel_axes], "depthwise_weight", layer)
        ctx.consume(x, [(weight, 0)])
    else:
        raise UnsupportedLayerError(
            f"{where(node)}: grouped convolution (groups={m.groups}, {m.in_channels}→"
            f"{m.out_channels} channels) is not supported; only groups=1 and depthwise "
            f"(groups = in = out channels). Register a rule with "
            f"weightspace.register_module_rule({type(m).__name__}, rule)"
        )
    rows = [(weight, 0)]
    if m.bias is not None:
        rows.append((ctx.add_parameter(path, "bias", [(out_space, 1)], "bias", layer), 0))
    classes = ctx.new_producer(out_space, rows)
    return Value(shape, out_space, 1, 1, layer, True, classes)


# ====================================================================== norms
def _norm(ctx: TraceContext, node: fx.Node, m: nn.Module, x: Value, op: str,
          per_neuron: dict[str, tuple[str, list]], scalars: list[str]) -> Value:
    """Attach a normalisation's parameters to the layer it normalises.

    ``per_neuron`` maps attribute -> (role, axes); parameters that are
    ``None`` on the module are skipped. A norm directly after its producer
    (conv -> bn) shares the producer's layer; otherwise (a second norm, a norm
    after an activation or a residual addition) it gets its own layer, joined
    to its input by identity edges.
    """
    path = str(node.target)
    ctx.call_module_once(path)
    ctx.use(x)
    present = {a: v for a, v in per_neuron.items() if getattr(m, a, None) is not None}
    scalars = [s for s in scalars if getattr(m, s, None) is not None]
    norm_kind = op.replace("_norm", "")
    target = x.layer
    if present or scalars:
        host = ctx.layers[x.layer]
        # share the producer's nodes only when the norm is its sole reader: in a
        # pre-norm residual stream the un-normalised value goes on, and the
        # stream's nodes must not carry the branch's γ/β
        source = node.args[0] if node.args else None
        sole_reader = isinstance(source, fx.Node) and len(source.users) == 1
        if not (x.fresh and sole_reader and host.norm == "none" and x.layer != ctx.input_layer):
            target = ctx.new_layer(path, x.space, op, [(x.layer, "norm", None, 1.0)],
                                   (), _spatial(x.shape, x.dim if x.dim is not None else 1))
        ctx.layers[target].norm = norm_kind
    elif x.fresh and ctx.layers[x.layer].norm == "none":
        ctx.layers[x.layer].norm = norm_kind
    rows = []
    for attr, (role, axes) in present.items():
        name = ctx.add_parameter(path, attr, axes, role, target)
        if role in ("norm_weight", "norm_bias"):
            rows.extend((name, i) for i, a in enumerate(axes) if a is not None)
    for attr in scalars:
        ctx.add_parameter(path, attr, [None] * getattr(m, attr).dim(), "scalar", target)
    # normalising sees a transformed input: no scaling/sign symmetry passes a norm
    ctx.require_untransformed(x)
    classes = ctx.new_producer(x.space, rows) if rows else {k: 0 for k in x.classes}
    return x.replace(shape=ctx.shape(node), layer=target, fresh=False, classes=classes)


def batch_norm_rule(ctx, node, m: nn.modules.batchnorm._NormBase, args, kwargs) -> Value:
    x = first_tensor(node, args)
    _need_channels_first(ctx, node, x, type(m).__name__)
    if ctx.space_size(x.space) != m.num_features:
        raise TraceError(f"{where(node)}: {type(m).__name__} expects {m.num_features} "
                         f"channels, got {ctx.space_size(x.space)}")
    ax = [(x.space, 1)]
    op = "instance_norm" if isinstance(m, nn.modules.instancenorm._InstanceNorm) else "batch_norm"
    return _norm(ctx, node, m, x, op, {
        "weight": ("norm_weight", ax), "bias": ("norm_bias", ax),
        "running_mean": ("running_mean", ax), "running_var": ("running_var", ax),
    }, ["num_batches_tracked"])


def group_norm_rule(ctx, node, m: nn.GroupNorm, args, kwargs) -> Value:
    x = first_tensor(node, args)
    _need_channels_first(ctx, node, x, "GroupNorm")
    size = ctx.space_size(x.space)
    if 1 < m.num_groups < size:
        ctx.restrict_permutations(x.space, m.num_groups)
    ax = [(x.space, 1)]
    return _norm(ctx, node, m, x, "group_norm",
                 {"weight": ("norm_weight", ax), "bias": ("norm_bias", ax)}, [])


def layer_norm_rule(ctx, node, m: nn.LayerNorm, args, kwargs) -> Value:
    x = first_tensor(node, args)
    k = len(m.normalized_shape)
    ctx.resolve_dim(x, -1)
    first_normalised = x.rank - k
    if x.dim >= first_normalised:
        axes = [None] * k
        axes[x.dim - first_normalised] = (x.space, x.block)
        role_w, role_b = "norm_weight", "norm_bias"
        per = {"weight": (role_w, axes), "bias": (role_b, axes)}
        return _norm(ctx, node, m, x, "layer_norm", per, [])
    # normalised over positions only: the parameters are shared by all neurons
    return _norm(ctx, node, m, x, "layer_norm", {}, ["weight", "bias"])


# ================================================================== structure
def add_rule(ctx: TraceContext, node: fx.Node, args: list, kwargs: dict, sign: float = 1.0) -> Any:
    values = tensor_args(node, args[:2])
    if not values:
        return Const()
    if len(values) == 1:
        # shifting by a constant or a broadcast tensor attribute
        x = values[0]
        other = args[1] if args[0] is x else args[0]
        if isinstance(other, Const) and other.attribute is not None:
            raise UnsupportedLayerError(
                f"{where(node)}: adding the tensor attribute {other.attribute!r} is not supported; "
                f"wrap it in a module and register a rule"
            )
        return x.replace(shape=ctx.shape(node), fresh=False, classes=ctx.passthrough(x, ()))
    a, b = values
    for v in (a, b):
        ctx.resolve_dim(v, 1)
    if a.dim is not None and b.dim is not None and (a.dim != b.dim or a.block != b.block):
        raise TraceError(
            f"{where(node)}: adding tensors whose neurons are on different axes "
            f"({a.dim} vs {b.dim}) is not supported"
        )
    ctx.use(a)
    ctx.use(b)
    space = ctx.tie(a.space, b.space, node)
    alpha = kwargs.get("alpha", 1.0)
    alpha = alpha.value if isinstance(alpha, Const) else alpha
    newer, older = (a, b) if a.layer >= b.layer else (b, a)
    if newer.layer != older.layer:
        coeff = 1.0
        if older is b:
            coeff = sign * float(alpha)
        ctx.layers[newer.layer].inputs.append((older.layer, "residual", None, coeff))
    classes = ctx.join_classes([a, b])
    return newer.replace(shape=ctx.shape(node), space=space, fresh=False, classes=classes)


def sub_rule(ctx, node, args, kwargs):
    return add_rule(ctx, node, args, kwargs, sign=-1.0)


def mul_rule(ctx: TraceContext, node: fx.Node, args: list, kwargs: dict, divide: bool = False) -> Any:
    values = tensor_args(node, args[:2])
    if not values:
        return Const()
    if len(values) == 1:
        x = values[0]
        other = args[1] if args[0] is x else args[0]
        if divide and args[0] is not x:
            # c / x is an elementwise nonlinearity
            return x.replace(shape=ctx.shape(node), fresh=False, classes=ctx.passthrough(x, ()))
        if isinstance(other, Const) and other.attribute is not None:
            t = ctx.graph_module.get_parameter(other.attribute) if other.attribute in dict(
                ctx.graph_module.named_parameters()) else ctx.graph_module.get_buffer(other.attribute)
            if t.numel() != 1:
                raise UnsupportedLayerError(
                    f"{where(node)}: multiplying by the tensor attribute {other.attribute!r} of "
                    f"shape {list(t.shape)} is not supported (only scalars); wrap it in a module "
                    f"and register a rule"
                )
            ctx.add_parameter("", other.attribute, [None] * t.dim(), "scalar", x.layer)
        # multiplying by a scalar is linear: every symmetry passes
        return x.replace(shape=ctx.shape(node), fresh=False)
    a, b = values
    if a.layer != b.layer:
        raise UnsupportedLayerError(
            f"{where(node)}: multiplying two tensors from different layers "
            f"({ctx.layers[a.layer].name!r} and {ctx.layers[b.layer].name!r}) is not supported; "
            f"register a rule for the module that does it"
        )
    ctx.tie(a.space, b.space, node)
    ctx.require_untransformed(a)
    ctx.require_untransformed(b)
    return a.replace(shape=ctx.shape(node), fresh=False, classes={k: 0 for k in a.classes})


def div_rule(ctx, node, args, kwargs):
    return mul_rule(ctx, node, args, kwargs, divide=True)


def reshape_rule(ctx: TraceContext, node: fx.Node, args: list, kwargs: dict) -> Value:
    """view / reshape / flatten / squeeze / unsqueeze, judged from the shapes.

    Allowed: reshaping the axes after the neurons (feature axis kept), and
    flattening the neurons together with the axes after them (conv → linear:
    each neuron then owns a block of ``H·W`` entries).
    """
    x = first_tensor(node, args)
    ctx.resolve_dim(x, 1)
    out = ctx.shape(node)
    s, d = x.shape, x.dim
    pre, inner = math.prod(s[:d]), math.prod(s[d + 1:])
    for d2 in range(len(out)):
        if math.prod(out[:d2]) != pre:
            continue
        if out[d2] == s[d] and math.prod(out[d2 + 1:]) == inner:
            return x.replace(shape=out, dim=d2)
        if out[d2] == s[d] * inner and d2 == len(out) - 1 and s[d] > 0:
            if x.layer == ctx.input_layer and not ctx.input_fixed:
                # flattening the raw input: every entry becomes an input neuron
                ctx.resize_input(s[d] * inner, ())
                return x.replace(shape=out, dim=d2, block=1)
            return x.replace(shape=out, dim=d2, block=x.block * inner)
    raise TraceError(
        f"{where(node)}: reshaping {list(s)} (neurons on axis {d}) to {list(out)} would mix "
        f"neurons of one layer; only flattening the axes after the neurons is supported"
    )


def pool_rule(kinds: tuple[str, ...]):
    def rule(ctx: TraceContext, node: fx.Node, *rest) -> Value:
        x = first_tensor(node, rest[-2])
        _need_channels_first(ctx, node, x, "pooling")
        ctx.use(x)
        return x.replace(shape=ctx.shape(node), fresh=False, classes=ctx.passthrough(x, kinds))

    return rule


def reduce_rule(kinds: tuple[str, ...]):
    """mean / amax / sum over positions (global pooling written by hand)."""

    def rule(ctx: TraceContext, node: fx.Node, args: list, kwargs: dict) -> Value:
        x = first_tensor(node, args)
        ctx.resolve_dim(x, 1)
        dims = args[1] if len(args) > 1 else kwargs.get("dim")
        dims = dims.value if isinstance(dims, Const) else dims
        if dims is None:
            raise TraceError(f"{where(node)}: a reduction over all axes mixes every neuron")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = [dd % x.rank for dd in dims]
        if x.dim in dims or 0 in dims:
            raise TraceError(
                f"{where(node)}: reducing over the neuron axis {x.dim} (or the batch axis) is "
                f"not supported; reduce over the spatial axes only"
            )
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        keep = keep.value if isinstance(keep, Const) else keep
        new_dim = x.dim if keep else x.dim - sum(1 for dd in dims if dd < x.dim)
        ctx.use(x)
        return x.replace(shape=ctx.shape(node), dim=new_dim, fresh=False,
                         classes=ctx.passthrough(x, kinds))

    return rule


def const_rule(ctx, node, args, kwargs) -> Const:
    return Const()


def getitem_rule(ctx: TraceContext, node: fx.Node, args: list, kwargs: dict) -> Any:
    if isinstance(args[0], Value):
        raise UnsupportedLayerError(
            f"{where(node)}: indexing or slicing a tensor of neurons is not supported"
        )
    return Const()


def dropout_fn_rule(ctx, node, args, kwargs) -> Value:
    return identity_rule(ctx, node, args, kwargs)


# ============================================================ registrations
def _register_builtins() -> None:
    for cls in (nn.Linear, nn.LazyLinear) if hasattr(nn, "LazyLinear") else (nn.Linear,):
        register_module_rule(cls, linear_rule)
    for cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d):
        register_module_rule(cls, conv_rule)
    for cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
                nn.InstanceNorm2d, nn.InstanceNorm3d):
        register_module_rule(cls, batch_norm_rule)
    register_module_rule(nn.GroupNorm, group_norm_rule)
    register_module_rule(nn.LayerNorm, layer_norm_rule)

    activation_modules = {
        nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.GELU: "gelu", nn.SiLU: "silu",
        nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu",
        nn.Softplus: "softplus", nn.Mish: "mish", nn.ReLU6: "relu6", nn.Hardtanh: "hardtanh",
        nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid", nn.Softsign: "softsign",
        nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax",
    }
    for cls, name in activation_modules.items():
        register_module_rule(cls, elementwise(name))
    register_module_rule(nn.Identity, identity_rule)
    for cls in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                nn.FeatureAlphaDropout):
        register_module_rule(cls, identity_rule)
    for cls in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d):
        register_module_rule(cls, pool_rule(("scale",)))
    for cls in (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d):
        register_module_rule(cls, pool_rule(("scale", "sign")))
    register_module_rule(nn.Flatten, lambda ctx, node, m, args, kwargs: reshape_rule(ctx, node, args, kwargs))

    for name in ACTIVATIONS:
        register_function_rule(name, elementwise(name))
    for alias, name in {"sine": "sin", "relu_": "relu", "tanh_": "tanh", "sigmoid_": "sigmoid",
                        "leaky_relu_": "leaky_relu", "elu_": "elu", "hardtanh_": "hardtanh",
                        "softmax": "softmax"}.items():
        register_function_rule(alias, elementwise(name))
    for name in ("add", "iadd", "add_", "radd"):
        register_function_rule(name, add_rule)
    for name in ("sub", "isub", "sub_"):
        register_function_rule(name, sub_rule)
    for name in ("mul", "imul", "mul_", "rmul"):
        register_function_rule(name, mul_rule)
    for name in ("truediv", "div", "itruediv", "div_"):
        register_function_rule(name, div_rule)
    register_function_rule("neg", lambda ctx, node, args, kwargs: first_tensor(node, args).replace(
        shape=ctx.shape(node), fresh=False))
    for name in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                 "feature_alpha_dropout", "contiguous", "clone", "detach"):
        register_function_rule(name, dropout_fn_rule)
    for name in ("flatten", "view", "reshape", "squeeze", "unsqueeze"):
        register_function_rule(name, reshape_rule)
    for name in ("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d",
                 "adaptive_max_pool2d", "adaptive_max_pool3d", "max_pool1d_with_indices",
                 "max_pool2d_with_indices", "max_pool3d_with_indices", "lp_pool1d", "lp_pool2d"):
        register_function_rule(name, pool_rule(("scale",)))
    for name in ("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                 "adaptive_avg_pool2d", "adaptive_avg_pool3d"):
        register_function_rule(name, pool_rule(("scale", "sign")))
    register_function_rule("mean", reduce_rule(("scale", "sign")))
    register_function_rule("sum", reduce_rule(("scale", "sign")))
    register_function_rule("amax", reduce_rule(("scale",)))
    for name in ("size", "dim", "getattr", "numel"):
        register_function_rule(name, const_rule)
    register_function_rule(operator.getitem, getitem_rule)


_register_builtins()

"""Derive a :class:`WeightSpaceSpec` from a module by tracing it.

The spec comes from the computation, never from state-dict key names or order:
``torch.fx`` records ``forward``; shape propagation on an example input gives
every tensor's shape; then each node is interpreted by its rule
(:mod:`weightspace.spec.rules`) on abstract values that track neuron spaces.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from weightspace.spec import rules as rules_mod
from weightspace.spec.containers import (
    LayerSpec,
    NeuronSpace,
    ParameterSpec,
    WeightSpaceSpec,
)
from weightspace.spec.context import Const, TraceContext, Value, tensor_dtype_name, where
from weightspace.spec.errors import TraceError, UnsupportedLayerError

log = logging.getLogger(__name__)


class _SpecTracer(fx.Tracer):
    """Stops at modules that have a rule; steps into parameter-free modules;
    refuses parametrised modules that have none."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if rules_mod.module_rule_for(m) is not None:
            return True
        own = [n for n, p in m.named_parameters(recurse=False) if p is not None]
        own += [n for n, b in m.named_buffers(recurse=False) if b is not None]
        if own:
            raise UnsupportedLayerError(
                f"module {module_qualified_name!r} of type {type(m).__module__}."
                f"{type(m).__qualname__} has parameters {own} but no tracing rule; register one "
                f"with weightspace.register_module_rule({type(m).__name__}, rule) "
                f"(see weightspace.spec.rules for examples)"
            )
        return False


def _example(module: nn.Module, example_input: Tensor | Sequence[int]) -> Tensor:
    if isinstance(example_input, Tensor):
        return example_input
    shape = tuple(int(s) for s in example_input)
    if not shape or any(s <= 0 for s in shape):
        raise TraceError(f"input shape {list(shape)} is not a valid tensor shape")
    # match the module's floating dtype and device (a float64 model needs float64 input)
    ref = next((t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()), None)
    dtype = ref.dtype if ref is not None else torch.get_default_dtype()
    device = ref.device if ref is not None else None
    return torch.randn(shape, dtype=dtype, device=device)


def trace(module: nn.Module, example_input: Tensor | Sequence[int]) -> WeightSpaceSpec:
    """Derive the weight-space spec of ``module``.

    Args:
        module: the network. It is not modified (its train/eval modes are
            restored and no running statistic is updated).
        example_input: an input batch, or its shape (batch axis first); used
            to learn every tensor's shape.

    Returns:
        The :class:`WeightSpaceSpec`.

    Raises:
        UnsupportedLayerError: a parametrised module or a function without a
            rule (the message names the module path and type).
        TraceError: ``forward`` cannot be traced symbolically, or an operation
            mixes neurons in a way the spec cannot describe.

    Example::

        >>> spec = weightspace.trace(MLP(64, (32, 32), 10), (1, 64))
        >>> [s.name for s in spec.permutable_spaces]
        ['layers.0', 'layers.2']
    """
    x = _example(module, example_input)
    tracer = _SpecTracer()
    try:
        graph = tracer.trace(module)
    except (UnsupportedLayerError, TraceError):
        raise
    except Exception as err:  # fx raises many types; say what happened and where
        raise TraceError(
            f"torch.fx could not trace {type(module).__name__}.forward: {err}. Data-dependent "
            f"control flow or non-torch calls in forward are not traceable"
        ) from err
    gm = fx.GraphModule(tracer.root, graph)
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            try:
                # run plainly first: ShapeProp prints a traceback of its own on failure
                module(x)
            except Exception as err:
                raise TraceError(
                    f"running {type(module).__name__} on an example input of shape "
                    f"{list(x.shape)} failed: {str(err).splitlines()[0] if str(err) else err!r}; "
                    f"is the example input's shape right (batch axis first)?",
                    parameter="input_shape") from err
            ShapeProp(gm).propagate(x)
    finally:
        for m, mode in modes.items():
            m.training = mode
    ctx = TraceContext(module, gm)
    env: dict[fx.Node, object] = {}
    outputs: list[Value] = []
    for node in gm.graph.nodes:
        env[node] = _interpret(ctx, node, env, outputs)
    return _finalise(ctx, module, x, outputs)


def _materialise(arg, env):
    return fx.node.map_arg(arg, lambda n: env[n])


def _flatten_values(obj) -> list[Value]:
    if isinstance(obj, Value):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [v for o in obj for v in _flatten_values(o)]
    if isinstance(obj, dict):
        return [v for o in obj.values() for v in _flatten_values(o)]
    return []


def _interpret(ctx: TraceContext, node: fx.Node, env: dict, outputs: list[Value]):
    if node.op == "placeholder":
        if ctx.input_layer is not None:
            raise TraceError(
                f"forward takes more than one input ({node.name!r}); weightspace traces modules "
                f"with a single tensor input"
            )
        shape = ctx.shape(node)
        dim = 1 if len(shape) >= 2 else 0
        if len(shape) >= 3 and _first_user_wants_last_axis(ctx, node):
            dim = len(shape) - 1
        space = ctx.new_space(shape[dim], "input")
        spatial = tuple(s for i, s in enumerate(shape) if i not in (0, dim))
        ctx.input_layer = ctx.new_layer("input", space, "input", [], (), spatial)
        return Value(shape, space, None if len(shape) >= 3 else dim, 1, ctx.input_layer, False,
                     {"scale": 0, "sign": 0})
    if node.op == "get_attr":
        return Const(attribute=str(node.target))
    if node.op == "output":
        values = _flatten_values(_materialise(node.args[0], env))
        for v in values:
            ctx.require_untransformed(v)
            ctx.use(v)
            ctx.layers[v.layer].output = True
        outputs.extend(values)
        return None
    args = list(_materialise(node.args, env))
    kwargs = dict(_materialise(node.kwargs, env))
    if node.op == "call_module":
        m = ctx.module(node)
        rule = rules_mod.module_rule_for(m)
        if rule is None:  # unreachable: the tracer only stops at modules with rules
            raise UnsupportedLayerError(f"{where(node)}: no rule for {type(m).__name__}")
        result = rule(ctx, node, m, args, kwargs)
    else:
        rule = rules_mod.function_rule_for(node)
        if rule is None:
            if not any(isinstance(a, Value) for a in _flatten_values(args) + _flatten_values(kwargs)):
                return Const()  # arithmetic on sizes and constants
            target = node.target if isinstance(node.target, str) else getattr(
                node.target, "__qualname__", str(node.target))
            raise UnsupportedLayerError(
                f"{where(node)}: {target!s} has no tracing rule; register one with "
                f"weightspace.register_function_rule({target!r}, rule) "
                f"(see weightspace.spec.rules for examples)"
            )
        result = rule(ctx, node, args, kwargs)
    return result


def _first_user_wants_last_axis(ctx: TraceContext, node: fx.Node) -> bool:
    for user in node.users:
        if user.op == "call_module" and isinstance(ctx.module(user), nn.Linear):
            return True
        if user.op == "call_module" and isinstance(ctx.module(user), nn.LayerNorm):
            return True
    return False


def _finalise(ctx: TraceContext, module: nn.Module, x: Tensor, outputs: list[Value]) -> WeightSpaceSpec:
    """Turn the interpreted graph into the spec: spaces, layers, then
    parameters in the module's state-dict order, and check they agree."""
    if not outputs:
        raise TraceError(f"{type(module).__name__}.forward returns no tensor")
    state = module.state_dict()
    param_order = {name: i for i, name in enumerate(state)}
    spaces = _spaces(ctx, outputs, param_order)
    layers = _layers(ctx)
    parameters = _parameters(ctx, state, trainable={name for name, _ in module.named_parameters()})
    missing = set(ctx.parameters) - set(param_order)
    for name in sorted(missing):
        log.info("parameter %r is used by forward but not in the state dict; ignored", name)
    names = [s.name for s in spaces]
    if len(set(names)) != len(names):
        raise TraceError(f"duplicate space names {names}")
    spec = WeightSpaceSpec(
        spaces=tuple(spaces),
        parameters=tuple(parameters),
        layers=tuple(layers),
        input_shape=tuple(x.shape[1:]),
        module_type=f"{type(module).__module__}.{type(module).__qualname__}",
    )
    _check_layers_consistent(spec)
    return spec


def _spaces(ctx: TraceContext, outputs: list[Value], param_order: dict[str, int]) -> list[NeuronSpace]:
    """The neuron spaces, in order of first appearance along the layers, with
    the scale/sign symmetry rules of the hidden ones (sorted by parameter in
    state-dict order, then axis)."""
    input_space = ctx.find_space(ctx.layers[ctx.input_layer].space)
    output_spaces = {ctx.find_space(v.space) for v in outputs}
    scale = ctx.symmetry_rules("scale")
    sign = ctx.symmetry_rules("sign")
    order: list[int] = []
    activations: dict[int, str] = {}
    for layer in ctx.layers:
        root = ctx.find_space(layer.space)
        if root not in order:
            order.append(root)
        if layer.activation and root not in activations:
            activations[root] = layer.activation

    def sort_rules(rs):
        return tuple(sorted(rs, key=lambda r: (param_order.get(r.parameter, -1), r.axis)))

    spaces = []
    for root in order:
        role = "input" if root == input_space else "output" if root in output_spaces else "hidden"
        blocks = ctx.space_blocks(root)
        if len(blocks) > 1:
            raise TraceError(
                f"neuron space {ctx.space_name(root)!r} is normalised by GroupNorms with different "
                f"group counts {sorted(blocks)}; not supported"
            )
        hidden = role == "hidden"
        spaces.append(NeuronSpace(
            name=ctx.space_name(root),
            size=ctx.space_size(root),
            role=role,
            activation=activations.get(root, "identity"),
            permutation_blocks=next(iter(blocks)) if blocks else 1,
            scale_rules=sort_rules(scale.get(root, [])) if hidden else (),
            sign_rules=sort_rules(sign.get(root, [])) if hidden else (),
        ))
    return spaces


def _layers(ctx: TraceContext) -> list[LayerSpec]:
    """The layers in trace order; depth = weight layers on the longest path
    from the input."""
    depth: list[int] = []
    layers = []
    for i, layer in enumerate(ctx.layers):
        d = 0
        for src, kind, _, _ in layer.inputs:
            d = max(d, depth[src] + (1 if kind in ("weight", "depthwise") else 0))
        depth.append(d)
        role = "input" if i == ctx.input_layer else "output" if layer.output else "hidden"
        layers.append(LayerSpec(
            name=layer.name,
            space=ctx.space_name(layer.space),
            size=ctx.space_size(layer.space),
            role=role,
            op=layer.op,
            depth=d,
            activation=layer.activation or "identity",
            norm=layer.norm,
            kernel_size=layer.kernel_size,
            spatial=layer.spatial,
            inputs=tuple(ctx.make_input(*inp) for inp in layer.inputs),
        ))
    return layers


def _parameters(ctx: TraceContext, state: dict[str, Tensor], trainable: set[str]
                ) -> list[ParameterSpec]:
    """One entry per state-dict entry, in the state dict's order (the
    canonical flat order); an entry forward never uses is kept as "unused"."""
    parameters = []
    for name, tensor in state.items():
        p = ctx.parameters.get(name)
        is_buffer = name not in trainable
        if p is None:
            log.warning(
                "state-dict entry %r is not used by forward; it is kept as an unused parameter "
                "(not permuted, stored as a graph scalar)", name)
            parameters.append(ParameterSpec(name, tuple(tensor.shape), tensor_dtype_name(tensor),
                                            (None,) * tensor.dim(), "unused", "", "", is_buffer))
            continue
        axes = tuple(ctx.make_axis(a) for a in p.axes)
        if len(axes) != tensor.dim():
            raise TraceError(f"parameter {name!r} has {tensor.dim()} axes, its rule gave {len(axes)}")
        for i, (a, raw) in enumerate(zip(axes, p.axes, strict=True)):
            if a is not None and tensor.shape[i] != ctx.space_size(raw[0]) * a.block:
                raise TraceError(
                    f"parameter {name!r} axis {i} has size {tensor.shape[i]} but indexes space "
                    f"{a.space!r} of size {ctx.space_size(raw[0])} × block {a.block}"
                )
        parameters.append(ParameterSpec(name, tuple(tensor.shape), tensor_dtype_name(tensor), axes,
                                        p.role, ctx.layers[p.layer].name, p.module, is_buffer))
    return parameters


def _check_layers_consistent(spec: WeightSpaceSpec) -> None:
    names = [layer.name for layer in spec.layers]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise TraceError(f"layer names {dup} are not unique")
    for p in spec.parameters:
        if p.role in ("weight",) and (len(p.axes) < 2 or p.axes[0] is None or p.axes[1] is None):
            raise TraceError(f"weight {p.name!r} must index an output and an input space")

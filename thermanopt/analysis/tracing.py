"""Trace a torch model into one small operator graph for symmetry analysis.

Three front ends produce the same :class:`TracedGraph` (a topologically ordered
list of :class:`OpNode` with canonical op names and output shapes):

1. ``torch.fx.symbolic_trace`` with the standard layers as leaf modules;
2. ``torch.export`` (aten-level graph; ``nn.MultiheadAttention`` calls are collapsed
   back into one ``mha`` node with the help of ``nn_module_stack``);
3. a forward-pass recording (``TorchFunctionMode``) of the functional calls made
   while the model runs on the example inputs. This is the fallback for models that
   neither export nor fx can trace (data-dependent control flow: one path is recorded,
   and the report says so).

The graph says which front end produced it (``TracedGraph.method``). An operation
that is not understood raises :class:`UnsupportedOpError` naming the module and op;
nothing is guessed.
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "OpNode",
    "TracedGraph",
    "TracingError",
    "UnsupportedOpError",
    "trace",
    "canonical_parameter_names",
    "output_leaves",
    "clear_cache",
]


class TracingError(ValueError):
    """The model could not be traced by any front end."""


class UnsupportedOpError(ValueError):
    """An operation that the symmetry analysis does not handle."""

    def __init__(self, op: str, module: str | None = None, detail: str = ""):
        where = f" in module '{module}'" if module else ""
        msg = f"unsupported operation '{op}'{where}"
        if detail:
            msg += f": {detail}"
        super().__init__(msg)
        self.op = op
        self.module = module


@dataclass
class Ref:
    """Reference to another node's output inside ``OpNode.args``."""

    name: str

    def __repr__(self) -> str:
        return f"%{self.name}"


@dataclass
class OpNode:
    """One operation: ``op`` is canonical, ``args`` holds :class:`Ref` and constants."""

    name: str
    op: str
    args: tuple
    kwargs: dict
    shape: tuple | None
    module: str | None = None
    target: str = ""
    meta: dict = field(default_factory=dict)


@dataclass
class TracedGraph:
    """Traced model in one format for every front end: op nodes in execution order, inputs, outputs,
    parameter names and the tracer that produced it.
    """
    method: str
    nodes: list[OpNode]
    outputs: list[str]
    notes: list[str] = field(default_factory=list)

    def node(self, name: str) -> OpNode:
        """The op node called ``name``."""
        return self._index[name]

    def __post_init__(self) -> None:
        self._index = {n.name: n for n in self.nodes}
        self.unused: list[str] = []


def canonical_parameter_names(model: nn.Module) -> dict[str, str]:
    """Map every parameter name (tied aliases included) to its canonical name."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(p), name)
        out[name] = first[id(p)]
    return out


# ----------------------------------------------------------------------------------------
# canonical op names shared by the three front ends
_UNARY = {
    "relu": "relu", "relu_": "relu", "leaky_relu": "leaky_relu", "leaky_relu_": "leaky_relu",
    "tanh": "tanh", "sigmoid": "sigmoid", "gelu": "gelu", "silu": "silu", "silu_": "silu",
    "gelu_": "gelu", "elu": "other_act", "elu_": "other_act", "selu": "other_act",
    "celu": "other_act", "softplus": "other_act", "mish": "other_act",
    "hardtanh": "other_act", "hardtanh_": "other_act", "relu6": "other_act",
    "hardswish": "hardswish", "hardswish_": "hardswish", "hardsigmoid": "hardsigmoid",
    "hardsigmoid_": "hardsigmoid", "_to_copy": "identity", "tanh_": "tanh",
    "sigmoid_": "sigmoid",
    "dropout": "identity", "dropout_": "identity", "feature_dropout": "identity",
    "alpha_dropout": "identity", "contiguous": "identity", "clone": "identity",
    "detach": "identity", "float": "identity", "double": "identity", "to": "identity",
    "type_as": "identity", "alias": "identity", "lift_fresh_copy": "identity",
    "neg": "neg", "identity": "identity",
}
_RESHAPE = {"view", "reshape", "flatten", "unflatten", "unsqueeze", "squeeze", "view_as",
            "reshape_as", "_unsafe_view", "expand_as"}
_NONTENSOR = {"size", "dim", "sym_size", "numel", "getattr", "sym_numel", "_assert_tensor_metadata",
              "_assert_scalar", "sym_constrain_range_for_size", "_check_is_size", "item",
              "sym_stride", "sym_storage_offset"}
#: tensor factories: the output does not depend on any parameter
_FACTORIES = {"arange", "full", "zeros", "ones", "empty", "scalar_tensor", "zeros_like",
              "ones_like", "full_like", "empty_like", "new_zeros", "new_ones", "new_full",
              "new_empty", "randn", "rand", "randn_like", "rand_like", "tensor", "eye",
              "linspace", "tril", "triu", "_local_scalar_dense", "lift_fresh"}
#: elementwise functions that commute with permutations only (canonical "pointwise")
_POINTWISE = {"where", "maximum", "minimum", "pow", "clamp", "clamp_min", "clamp_max",
              "clamp_", "exp", "log", "sqrt", "rsqrt", "abs", "sin", "cos", "erf",
              "reciprocal", "square", "eq", "ne", "lt", "gt", "le", "ge", "logical_and",
              "logical_or", "logical_not", "masked_fill", "masked_fill_", "bitwise_and",
              "bitwise_or", "bitwise_not", "log1p", "expm1", "sign", "floor", "ceil", "round",
              "fmod", "remainder", "floor_divide", "isnan", "isinf", "lerp", "atan2",
              "exp2", "tan", "sinh", "cosh", "erfinv", "triu_", "tril_", "bool", "long",
              "int", "where_", "max_other", "min_other", "pow_", "exp_", "clamp_min_",
              "div_floor", "copysign", "nan_to_num", "logit", "softsign", "tanhshrink",
              "__and__", "__or__", "__xor__", "__invert__", "bitwise_xor", "logical_xor"}
#: ops along given dims: (name -> how to read the dims from the args)
_ALONG = {"roll", "flip", "cumsum", "cumprod", "repeat", "tile", "repeat_interleave",
          "narrow_copy", "sort", "flip_", "logcumsumexp", "cummax", "diff"}

_MODULE_OPS: dict[type, str] = {
    nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.GELU: "gelu", nn.SiLU: "silu", nn.Dropout: "identity", nn.Identity: "identity",
    nn.Dropout1d: "identity", nn.Dropout2d: "identity",
}


def _fn_name(target: Any) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, torch._ops.OpOverload):
        return "aten." + target._schema.name.split("::")[-1]
    if target in (operator.add, operator.iadd):
        return "add"
    if target in (operator.sub, operator.isub):
        return "sub"
    if target in (operator.mul, operator.imul):
        return "mul"
    if target in (operator.truediv, operator.itruediv):
        return "div"
    if target is operator.matmul:
        return "matmul"
    if target is operator.getitem:
        return "getitem"
    if target is operator.neg:
        return "neg"
    if target is getattr:
        return "getattr"
    return getattr(target, "__name__", str(target))


def _is_float_tensor_shape(v: Any) -> bool:
    return isinstance(v, torch.Tensor)


class _Builder:
    """Collects canonical nodes; shared by the front ends."""

    def __init__(self, model: nn.Module, method: str):
        self.model = model
        self.method = method
        self.nodes: list[OpNode] = []
        self.names: set[str] = set()
        self.canon = canonical_parameter_names(model)
        self.param_nodes: dict[str, str] = {}
        self.notes: list[str] = []

    def fresh(self, base: str) -> str:
        base = base.replace(".", "_")
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f"{base}_{k}"
        self.names.add(name)
        return name

    def add(self, name, op, args, kwargs, shape, module=None, target="", meta=None) -> str:
        if op == "batch_norm" and "stats_refs" in kwargs:
            kwargs = dict(kwargs)
            m, v, eps = kwargs.pop("stats_refs")
            names = [self.buffer_name(r) for r in (m, v)]
            kwargs["stats"] = None if None in names else (names[0], names[1], float(eps or 0))
        if name in self.names:
            name = self.fresh(name)
        else:
            self.names.add(name)
        self.nodes.append(OpNode(name, op, tuple(args), dict(kwargs), shape, module, target,
                                 meta or {}))
        return name

    def buffer_name(self, ref: Any) -> str | None:
        """The module buffer a constant node stands for (None if it is not one)."""
        if not isinstance(ref, Ref):
            return None
        for n in reversed(self.nodes):
            if n.name == ref.name:
                return n.meta.get("buffer")
        return None

    def param(self, pname: str) -> Ref:
        c = self.canon.get(pname, pname)
        if c not in self.param_nodes:
            p = self.model.get_parameter(c)
            self.param_nodes[c] = self.add(self.fresh("param_" + c), "param", (), {},
                                           tuple(p.shape), meta={"param": c})
        return Ref(self.param_nodes[c])

    def shape_of(self, ref: Any) -> tuple | None:
        if isinstance(ref, Ref):
            return self._shape[ref.name]
        return None

    def finish(self, outputs: list[str]) -> TracedGraph:
        """Drop operations whose results never reach an output (dead code, control-flow
        tests); parameters are kept, and those never read are listed in ``unused``."""
        by_name = {n.name: n for n in self.nodes}
        live: set[str] = set()
        stack = list(outputs)
        while stack:
            name = stack.pop()
            if name in live or name not in by_name:
                continue
            live.add(name)
            node = by_name[name]
            for a in _refs(list(node.args) + list(node.kwargs.values())):
                stack.append(a)
        nodes = [n for n in self.nodes if n.name in live or n.op == "param"]
        dropped = sum(1 for n in self.nodes if n.name not in live and n.op not in
                      ("param", "input", "constant", "nontensor"))
        if dropped:
            self.notes.append(f"{dropped} operation(s) do not reach the output and were ignored")
        g = TracedGraph(self.method, nodes, outputs, self.notes)
        g.unused = [n.meta["param"] for n in nodes if n.op == "param" and n.name not in live]
        return g

    @property
    def _shape(self) -> dict:
        return {n.name: n.shape for n in self.nodes}


def _refs(args) -> list[str]:
    out = []
    for a in args:
        if isinstance(a, Ref):
            out.append(a.name)
        elif isinstance(a, (list, tuple)):
            out.extend(_refs(a))
    return out


def _normalize(fn: str, args: list, kwargs: dict, module: str | None) -> tuple[str, list, dict]:
    """Map a (function name, args) pair to canonical (op, args, kwargs)."""
    aten = fn.startswith("aten.")
    name = fn[5:] if aten else fn
    if name.startswith("_") and name[1:] in ("softmax", "log_softmax"):
        name = name[1:]
    if name in _UNARY:
        return _UNARY[name], [args[0]], {}
    if name in _RESHAPE:
        return "reshape", [args[0]], {}
    if name in ("expand",):
        return "expand", [args[0]], {}
    if name in ("add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "true_divide"):
        base = name.rstrip("_")
        base = {"true_divide": "div"}.get(base, base)
        alpha = kwargs.get("alpha", args[2] if len(args) > 2 and base in ("add", "sub") else 1)
        return base, [args[0], args[1]], {"alpha": alpha}
    if name in ("matmul", "mm", "bmm"):
        return "matmul", [args[0], args[1]], {}
    if name == "linear":
        a = list(args) + [kwargs.get("bias")] * (3 - len(args))
        return "linear", [a[0], a[1], kwargs.get("bias", a[2])], {}
    if name in ("conv1d", "conv2d", "conv3d", "convolution"):
        groups = kwargs.get("groups", args[6] if len(args) > 6 else 1)
        if name == "convolution":
            groups = args[8] if len(args) > 8 else 1
            if len(args) > 6 and args[6]:
                return "conv_transpose", list(args[:3]), {}
        bias = kwargs.get("bias", args[2] if len(args) > 2 else None)
        geom = {k: kwargs.get(k, args[i] if len(args) > i else None)
                for i, k in ((3, "stride"), (4, "padding"), (5, "dilation"))}
        return "conv", [args[0], args[1], bias], {"groups": groups, **geom}
    if name == "layer_norm":
        a = list(args) + [None] * 5
        return "layer_norm", [a[0], a[2] if "weight" not in kwargs else kwargs["weight"],
                              a[3] if "bias" not in kwargs else kwargs["bias"]], {
            "normalized_shape": tuple(a[1]), "eps": kwargs.get("eps", a[4] or 1e-5)}
    if name == "rms_norm":
        a = list(args) + [None] * 4
        return "rms_norm", [a[0], kwargs.get("weight", a[2]), None], {
            "normalized_shape": tuple(a[1]), "eps": kwargs.get("eps", a[3])}
    if name == "batch_norm":
        a = list(args) + [None] * 9
        if aten:  # input, weight, bias, running_mean, running_var, training, momentum, eps
            x, w, b, training = a[0], a[1], a[2], a[5]
            stats = (a[3], a[4], a[7])
        else:  # F.batch_norm(input, running_mean, running_var, weight, bias, training, ...)
            x = a[0]
            w, b = kwargs.get("weight", a[3]), kwargs.get("bias", a[4])
            training = kwargs.get("training", a[5] if a[5] is not None else False)
            stats = (kwargs.get("running_mean", a[1]), kwargs.get("running_var", a[2]),
                     kwargs.get("eps", a[7] if a[7] is not None else 1e-5))
        return "batch_norm", [x, w, b], {"training": bool(training), "stats_refs": stats}
    if name == "embedding":
        if aten:
            return "embedding", [args[0], args[1]], {}
        return "embedding", [args[1] if len(args) > 1 else kwargs["weight"], args[0]], {}
    if name in ("softmax", "log_softmax"):
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        if dim is None:
            return "softmax_implicit_dim", [args[0]], {}
        return "softmax", [args[0]], {"dim": dim, "log": name == "log_softmax"}
    if name == "scaled_dot_product_attention":
        a = list(args) + [None] * 4
        return "sdpa", [a[0], a[1], a[2], kwargs.get("attn_mask", a[3])], {}
    if name in ("max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices",
                "adaptive_max_pool1d", "adaptive_max_pool2d"):
        return "max_pool", [args[0]], {}
    if name in ("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d"):
        return "avg_pool", [args[0]], {}
    if name in ("mean", "sum"):
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        return "reduce", [args[0]], {"dim": dim, "keepdim": bool(keep)}
    if name in ("transpose", "swapaxes"):
        return "transpose", [args[0]], {"dims": (args[1], args[2])}
    if name == "t" or name == "numpy_T":
        return "transpose", [args[0]], {"dims": (0, 1)}
    if name == "permute":
        dims = args[1:] if len(args) > 2 or isinstance(args[1], int) else args[1]
        return "permute", [args[0]], {"dims": tuple(kwargs.get("dims", dims))}
    if name in ("cat", "concat", "concatenate"):
        dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
        return "cat", list(args[0]), {"dim": dim}
    if name in ("getitem", "slice", "select", "narrow"):
        if name == "slice":
            a = list(args) + [None] * 5
            return "slice", [a[0]], {"dim": a[1] or 0, "start": a[2], "end": a[3]}
        if name == "select":
            return "select", [args[0]], {"dim": args[1], "index": args[2]}
        return "getitem", [args[0]], {"index": args[1]}
    if name in _NONTENSOR:
        return "nontensor", [], {}
    extra = _normalize_more(name, args, kwargs)
    if extra is not None:
        return extra
    return fn, list(args) + [v for v in kwargs.values()], {}


def _normalize_more(name: str, args: list, kwargs: dict) -> tuple | None:
    """Canonical names of the factories, pointwise functions, splits, index, padding,
    GroupNorm, reductions and resampling ops (None: no rule; a barrier)."""
    a = list(args) + [None] * 8
    if name in _FACTORIES:
        return "constant", [], {}
    if name in _POINTWISE:
        return "pointwise", [x for x in args if not isinstance(x, (list, tuple))], {}
    if name in ("split", "split_with_sizes", "chunk", "unbind", "tensor_split", "unsafe_split"):
        dim = kwargs.get("dim", a[1] if name == "unbind" else a[2])
        return ("unbind" if name == "unbind" else "split"), [a[0]], {"dim": dim or 0}
    if name == "index":
        return "index", [a[0]], {"indices": list(a[1])}
    if name == "addmm":  # bias + x @ W (W stored as (in, out): GPT-2's Conv1D)
        return "addmm", [a[1], a[2], a[0]], {"beta": kwargs.get("beta", 1),
                                             "alpha": kwargs.get("alpha", 1)}
    if name in ("lstm", "gru") and isinstance(a[2], (list, tuple)):
        hx = list(a[1]) if isinstance(a[1], (list, tuple)) else [a[1]]
        return "rnn", [a[0]], {"cell": name, "hx": hx, "params": list(a[2]),
                               "has_biases": bool(a[3]), "num_layers": int(a[4]),
                               "bidirectional": bool(a[7]), "batch_first": bool(a[8])}
    if name == "index_select":
        return "index_select", [a[0]], {"dim": a[1]}
    if name in ("pad", "constant_pad_nd"):
        return "pad", [a[0]], {"value": kwargs.get("value", a[2] if a[2] is not None else 0)}
    if name == "stack":
        return "stack", list(a[0]), {"dim": kwargs.get("dim", a[1] or 0)}
    if name == "group_norm":
        return "group_norm", [a[0], kwargs.get("weight", a[2]), kwargs.get("bias", a[3])], {
            "groups": a[1]}
    if name in ("amax", "max", "amin", "min") and a[1] is not None:
        dim = kwargs.get("dim", a[1])
        keep = kwargs.get("keepdim", a[2] or False)
        return "reduce_max", [a[0]], {"dim": dim, "keepdim": bool(keep)}
    if name in ("var", "std", "var_mean", "std_mean"):
        dim = kwargs.get("dim", a[1])
        keep = kwargs.get("keepdim", a[3] if a[3] is not None else False)
        return "reduce_var", [a[0]], {"dim": dim, "keepdim": bool(keep)}
    if name.startswith("upsample") or name.startswith("_upsample") or name == "interpolate":
        return "upsample", [a[0]], {}
    if name in _ALONG:
        dims = kwargs.get("dims", kwargs.get("dim", a[2] if name == "roll" else a[1]))
        if name in ("repeat", "tile"):
            dims = None
        if isinstance(dims, int):
            dims = [dims]
        return "along", [a[0]], {"dims": dims, "name": name}
    return None


# ----------------------------------------------------------------------------------------
# fx front end
_LEAVES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm,
           nn.Embedding, nn.MultiheadAttention, nn.RMSNorm)


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _LEAVES) or super().is_leaf_module(m, qualname)


def _module_node(b: _Builder, mod: nn.Module, path: str, args: list, kwargs: dict,
                 shape, name: str) -> str:
    """Canonical node for a call of a leaf module."""
    def p(attr):
        t = getattr(mod, attr, None)
        return b.param(f"{path}.{attr}") if isinstance(t, nn.Parameter) else None

    x = args[0] if args else kwargs.get("input")
    if isinstance(mod, nn.Linear):
        return b.add(name, "linear", [x, p("weight"), p("bias")], {}, shape, path, "Linear")
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        geom = {"stride": mod.stride, "dilation": mod.dilation,
                "padding": mod.padding if mod.padding_mode == "zeros" else "nonzero"}
        return b.add(name, "conv", [x, p("weight"), p("bias")], {"groups": mod.groups, **geom},
                     shape, path, type(mod).__name__)
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        training = mod.training or not mod.track_running_stats
        stats = None if training else (f"{path}.running_mean", f"{path}.running_var", mod.eps)
        return b.add(name, "batch_norm", [x, p("weight"), p("bias")],
                     {"training": training, "stats": stats},
                     shape, path, type(mod).__name__)
    if isinstance(mod, nn.LayerNorm):
        return b.add(name, "layer_norm", [x, p("weight"), p("bias")],
                     {"normalized_shape": tuple(mod.normalized_shape), "eps": mod.eps},
                     shape, path, "LayerNorm")
    if isinstance(mod, nn.RMSNorm):
        return b.add(name, "rms_norm", [x, p("weight"), None],
                     {"normalized_shape": tuple(mod.normalized_shape), "eps": mod.eps},
                     shape, path, "RMSNorm")
    if isinstance(mod, nn.Embedding):
        if mod.max_norm is not None:
            raise UnsupportedOpError("embedding(max_norm)", path)
        return b.add(name, "embedding", [p("weight"), x], {}, shape, path, "Embedding")
    if isinstance(mod, nn.MultiheadAttention):
        q = x
        k = args[1] if len(args) > 1 else kwargs.get("key")
        v = args[2] if len(args) > 2 else kwargs.get("value")
        extra = [a for a in list(args[3:]) + [kwargs.get("key_padding_mask"),
                                             kwargs.get("attn_mask")] if a is not None]
        return _mha_node(b, mod, path, q, k, v, extra, shape, name)
    for typ, op in _MODULE_OPS.items():
        if isinstance(mod, typ):
            return b.add(name, op, [x], {}, shape, path, type(mod).__name__)
    if isinstance(mod, nn.Flatten):
        return b.add(name, "reshape", [x], {}, shape, path, "Flatten")
    if isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
        return b.add(name, "softmax", [x], {"dim": mod.dim, "log": isinstance(mod, nn.LogSoftmax)},
                     shape, path, type(mod).__name__)
    if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
        return b.add(name, "max_pool", [x], {}, shape, path, type(mod).__name__)
    if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        return b.add(name, "avg_pool", [x], {}, shape, path, type(mod).__name__)
    params = [b.param(f"{path}.{n}") for n, _ in mod.named_parameters()]
    return b.add(name, type(mod).__name__, list(args) + list(kwargs.values()) + params, {},
                 shape, path, type(mod).__name__)  # no rule: a barrier


def _mha_node(b, mod, path, q, k, v, extra, shape, name) -> str:
    if mod.bias_k is not None or mod.add_zero_attn:
        raise UnsupportedOpError("MultiheadAttention(add_bias_kv/add_zero_attn)", path)
    if not mod._qkv_same_embed_dim:
        raise UnsupportedOpError("MultiheadAttention(kdim/vdim != embed_dim)", path)
    inproj = b.param(f"{path}.in_proj_weight")
    inbias = b.param(f"{path}.in_proj_bias") if mod.in_proj_bias is not None else None
    outw = b.param(f"{path}.out_proj.weight")
    outb = b.param(f"{path}.out_proj.bias") if mod.out_proj.bias is not None else None
    return b.add(name, "mha", [q, k, v, inproj, inbias, outw, outb] + list(extra),
                 {"num_heads": mod.num_heads, "batch_first": mod.batch_first,
                  "n_extra": len(extra)}, shape, path, "MultiheadAttention")


def _shape_of(v) -> tuple | None:
    if isinstance(v, torch.Tensor):
        return tuple(v.shape)
    if isinstance(v, (tuple, list)) and v and isinstance(v[0], torch.Tensor):
        return tuple(v[0].shape)
    return None


def _convert_arg(a, env):
    if isinstance(a, torch.fx.Node):
        return env[a.name]
    if isinstance(a, (list, tuple)):
        return type(a)(_convert_arg(x, env) for x in a)
    if isinstance(a, slice):
        return slice(_convert_arg(a.start, env), _convert_arg(a.stop, env),
                     _convert_arg(a.step, env))
    return a


def _trace_fx(model: nn.Module, inputs: tuple) -> TracedGraph:
    tracer = _LeafTracer()
    graph = tracer.trace(model)
    gm = torch.fx.GraphModule(model, graph)
    # run the graph once to learn every shape (and concrete values of non-tensor nodes)
    vals: dict[str, Any] = {}
    it = iter(inputs)
    for n in gm.graph.nodes:
        args = torch.fx.node.map_arg(n.args, lambda x: vals[x.name])
        kwargs = torch.fx.node.map_arg(n.kwargs, lambda x: vals[x.name])
        if n.op == "placeholder":
            vals[n.name] = next(it)
        elif n.op == "get_attr":
            obj = gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            vals[n.name] = obj
        elif n.op == "call_function":
            vals[n.name] = n.target(*args, **kwargs)
        elif n.op == "call_method":
            vals[n.name] = getattr(args[0], n.target)(*args[1:], **kwargs)
        elif n.op == "call_module":
            vals[n.name] = gm.get_submodule(n.target)(*args, **kwargs)
        elif n.op == "output":
            vals[n.name] = args[0]
    b = _Builder(model, "fx")
    env: dict[str, Any] = {}
    params = dict(model.named_parameters(remove_duplicate=False))
    outputs: list[str] = []
    for n in gm.graph.nodes:
        val = vals.get(n.name)
        if n.op == "placeholder":
            if isinstance(val, torch.Tensor):
                env[n.name] = Ref(b.add(n.name, "input", (), {}, tuple(val.shape),
                                        meta={"dtype": val.dtype}))
            else:
                env[n.name] = val
            continue
        if n.op == "get_attr":
            if n.target in params:
                env[n.name] = b.param(n.target)
            elif isinstance(val, torch.Tensor):
                env[n.name] = Ref(b.add(n.name, "constant", (), {}, tuple(val.shape),
                                        meta={"buffer": n.target}))
            else:
                env[n.name] = val
            continue
        if n.op == "output":
            outs = torch.utils._pytree.tree_leaves(n.args[0])
            for o in outs:
                r = _convert_arg(o, env)
                if isinstance(r, Ref):
                    outputs.append(r.name)
            continue
        args = list(_convert_arg(n.args, env))
        kwargs = {k: _convert_arg(v, env) for k, v in n.kwargs.items()}
        if not isinstance(val, torch.Tensor) and not (
            isinstance(val, tuple) and val and isinstance(val[0], torch.Tensor)
        ):
            env[n.name] = val  # a concrete python value (shape arithmetic)
            continue
        shape = _shape_of(val)
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            env[n.name] = Ref(_module_node(b, mod, n.target, args, kwargs, shape, n.name))
            continue
        fn = _fn_name(n.target)
        if fn == "getitem" and isinstance(args[0], Ref) and b._shape[args[0].name] is not None \
                and isinstance(args[1], int) and _producer_op(b, args[0]) == "mha":
            if args[1] != 0:
                raise UnsupportedOpError("MultiheadAttention attention weights", None,
                                         "only the attention output (index 0) is supported")
            env[n.name] = args[0]
            continue
        op, cargs, ckw = _normalize(fn, args, kwargs, None)
        env[n.name] = Ref(b.add(n.name, op, cargs, ckw, shape, None, fn))
    return b.finish(outputs)


def _producer_op(b: _Builder, ref: Ref) -> str:
    for n in reversed(b.nodes):
        if n.name == ref.name:
            return n.op
    return ""


# ----------------------------------------------------------------------------------------
# torch.export front end
def _trace_export(model: nn.Module, inputs: tuple) -> TracedGraph:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ep = torch.export.export(model, tuple(inputs), strict=False)
    b = _Builder(model, "export")
    sig = {s.arg.name: s for s in ep.graph_signature.input_specs}
    env: dict[str, Any] = {}
    nodes = list(ep.graph.nodes)

    def mha_path(n) -> str | None:
        st = n.meta.get("nn_module_stack") or {}
        for path, typ in st.values():
            tname = typ if isinstance(typ, str) else f"{typ.__module__}.{typ.__qualname__}"
            if tname.endswith("MultiheadAttention"):
                return path
        return None

    # group the aten nodes of each MultiheadAttention call
    groups: dict[int, list] = {}
    gid_of: dict[str, int] = {}
    last_path, gid = None, -1
    for n in nodes:
        path = mha_path(n) if n.op == "call_function" else None
        if path is None:
            last_path = None
            continue
        if path != last_path:
            gid += 1
            groups[gid] = [path, []]
            last_path = path
        groups[gid][1].append(n)
        gid_of[n.name] = gid
    users_outside: dict[int, list] = {}
    inputs_outside: dict[int, list] = {}
    for g, (_path, members) in groups.items():
        names = {m.name for m in members}
        ins, outs = [], []
        for m in members:
            for a in m.all_input_nodes:
                if a.name not in names and a.name not in ins:
                    ins.append(a.name)
            if any(u.name not in names for u in m.users):
                outs.append(m.name)
        inputs_outside[g], users_outside[g] = ins, outs

    it = iter(inputs)
    outputs: list[str] = []
    done_groups: set[int] = set()
    for n in nodes:
        val = n.meta.get("val")
        shape = tuple(val.shape) if isinstance(val, torch.Tensor) else None
        if n.op == "placeholder":
            spec = sig[n.name]
            kind = spec.kind.name
            if kind == "PARAMETER":
                env[n.name] = b.param(spec.target)
            elif kind in ("BUFFER", "CONSTANT_TENSOR"):
                env[n.name] = Ref(b.add(n.name, "constant", (), {}, shape,
                                        meta={"buffer": spec.target}))
            else:
                v = next(it)
                if isinstance(v, torch.Tensor):
                    env[n.name] = Ref(b.add(n.name, "input", (), {}, shape,
                                            meta={"dtype": v.dtype}))
                else:
                    env[n.name] = v
            continue
        if n.op == "output":
            kinds = [s.kind.name for s in ep.graph_signature.output_specs]
            for o, kind in zip(n.args[0], kinds):
                if kind == "USER_OUTPUT" and isinstance(o, torch.fx.Node) and \
                        isinstance(env.get(o.name), Ref):
                    outputs.append(env[o.name].name)
            continue
        if n.name in gid_of:
            g = gid_of[n.name]
            if g in done_groups:
                continue
            done_groups.add(g)
            path, members = groups[g]
            mod = model.get_submodule(path)
            ext = [env[a] for a in inputs_outside[g]]
            tensors = [a for a in ext if isinstance(a, Ref)
                       and b.nodes[[x.name for x in b.nodes].index(a.name)].op != "param"]
            if len(tensors) != 1 or len(users_outside[g]) != 1:
                raise UnsupportedOpError("MultiheadAttention", path,
                                         "export front end handles self-attention only")
            out_node = users_outside[g][0]
            oval = [m for m in members if m.name == out_node][0].meta["val"]
            r = Ref(_mha_node(b, mod, path, tensors[0], tensors[0], tensors[0], [],
                              tuple(oval.shape), out_node))
            env[out_node] = r
            continue
        if n.op != "call_function":
            raise UnsupportedOpError(str(n.target), None, f"export node kind {n.op}")
        fn = _fn_name(n.target)
        args = list(_convert_arg(n.args, env))
        kwargs = {k: _convert_arg(v, env) for k, v in n.kwargs.items()}
        meta = {}
        if shape is None:
            if fn.endswith("add_") and isinstance(args[0], Ref):
                continue  # num_batches_tracked += 1
            if isinstance(val, (tuple, list)) and val and isinstance(val[0], torch.Tensor):
                shape = tuple(val[0].shape)
                meta["shapes"] = [tuple(v.shape) for v in val if isinstance(v, torch.Tensor)]
            else:
                env[n.name] = None
                continue
        stack = n.meta.get("nn_module_stack") or {}
        module = list(stack.values())[-1][0] if stack else None
        src = n.args[0] if n.args else None
        if fn == "getitem" and isinstance(src, torch.fx.Node) and isinstance(
                src.meta.get("val"), (tuple, list)):
            op, cargs, ckw = "item", [args[0]], {"index": args[1]}
        else:
            op, cargs, ckw = _normalize(fn, args, kwargs, module)
        env[n.name] = Ref(b.add(n.name, op, cargs, ckw, shape, module, fn, meta))
    return b.finish(outputs)


# ----------------------------------------------------------------------------------------
# forward-pass recording front end
class _Recorder(torch.overrides.TorchFunctionMode):
    def __init__(self, b: _Builder, tensor_names: dict[int, Ref]):
        super().__init__()
        self.b, self.names, self.keep = b, tensor_names, []
        self.depth = 0

    def _conv(self, a):
        if isinstance(a, torch.Tensor):
            r = self.names.get(id(a))
            if r is None:
                r = Ref(self.b.add(self.b.fresh("const"), "constant", (), {}, tuple(a.shape)))
                self.names[id(a)] = r
                self.keep.append(a)
            return r
        if isinstance(a, (list, tuple)):
            return type(a)(self._conv(x) for x in a)
        return a

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.depth > 0:
            return func(*args, **kwargs)
        self.depth += 1
        try:
            out = func(*args, **kwargs)
        finally:
            self.depth -= 1
        fn = _fn_name(func)
        if fn in ("__get__", "shape", "size", "dim", "__len__", "numel", "__format__",
                  "__repr__", "__bool__", "__hash__", "__eq__") or fn.startswith("_"):
            if fn not in ("__getitem__", "__add__", "__mul__", "__matmul__", "__radd__",
                          "__rmul__", "__sub__", "__truediv__", "__neg__", "__iadd__"):
                return out
        fn = {"__getitem__": "getitem", "__add__": "add", "__radd__": "add", "__iadd__": "add",
              "__mul__": "mul", "__rmul__": "mul", "__matmul__": "matmul", "__sub__": "sub",
              "__truediv__": "div", "__neg__": "neg"}.get(fn, fn)
        if not isinstance(out, torch.Tensor) and not (
                isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor)):
            return out
        first = out[0] if isinstance(out, tuple) else out
        if not (first.is_floating_point() or first.is_complex()):
            return out  # comparisons / index arithmetic: control flow, not a value path
        cargs = [self._conv(a) for a in args]
        ckw = {k: self._conv(v) for k, v in kwargs.items()}
        if fn == "multi_head_attention_forward":
            a = list(cargs) + [None] * 13
            if a[7] is not None or a[8] is not None or a[9] or ckw.get(
                    "use_separate_proj_weight"):
                raise UnsupportedOpError(fn, None, "add_bias_kv / add_zero_attn / separate "
                                         "projection weights")
            if not isinstance(a[5], Ref) or not isinstance(a[11], Ref):
                raise UnsupportedOpError(fn, None, "projection weights are not parameters")
            r = Ref(self.b.add(self.b.fresh("mha"), "mha",
                               [a[0], a[1], a[2], a[5], a[6], a[11], a[12]],
                               {"num_heads": a[4], "batch_first": False, "n_extra": 0},
                               tuple(first.shape), None, fn))
            self.names[id(first)] = r
            self.keep.append(first)
            return out
        op, a2, k2 = _normalize(fn, cargs, ckw, None)
        r = Ref(self.b.add(self.b.fresh(op), op, a2, k2, tuple(first.shape), None, fn))
        self.names[id(first)] = r
        self.keep.append(first)
        return out


def _trace_forward(model: nn.Module, inputs: tuple) -> TracedGraph:
    b = _Builder(model, "forward")
    names: dict[int, Ref] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        names[id(p)] = b.param(pname)
    for bname, buf in model.named_buffers():
        names[id(buf)] = Ref(b.add(b.fresh("buffer_" + bname), "constant", (), {},
                                   tuple(buf.shape), meta={"buffer": bname}))
    for i, x in enumerate(inputs):
        if isinstance(x, torch.Tensor):
            names[id(x)] = Ref(b.add(f"input_{i}", "input", (), {}, tuple(x.shape),
                                     meta={"dtype": x.dtype}))
    rec = _Recorder(b, names)
    with rec, torch.no_grad():
        out = model(*inputs)
    outs = output_leaves(out)
    outputs = [names[id(o)].name for o in outs if id(o) in names]
    b.notes.append("forward-pass recording: one execution path (data-dependent control flow "
                   "is not seen)")
    return b.finish(outputs)


def output_leaves(out: Any) -> list[torch.Tensor]:
    """The tensors of a model output, flattened as a pytree: tensors, tuples, lists, dicts,
    dataclasses and Hugging Face ``ModelOutput`` objects (``None`` fields skipped)."""
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        if hasattr(out, "to_tuple"):
            return output_leaves(out.to_tuple())
        return output_leaves([getattr(out, f.name) for f in dataclasses.fields(out)])
    if isinstance(out, dict):
        return output_leaves(list(out.values()))
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in output_leaves(o)]
    return [out] if isinstance(out, torch.Tensor) else []


_FRONT_ENDS = {"export": _trace_export, "fx": _trace_fx, "forward": _trace_forward}
#: order of the front ends tried by ``method="auto"``: ``torch.export`` (non-strict, the
#: ATen graph; about 0.6 s for ResNet-18 once torch's export machinery is loaded, and cached
#: per model and input signature), then fx, then the forward recording.
AUTO_ORDER = ("export", "fx", "forward")
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _signature(model: nn.Module, inputs: tuple, method: str) -> tuple:
    """What a traced graph depends on: the method, input shapes/dtypes, train flags and the
    parameter and buffer layout."""
    def sig(x):
        return (tuple(x.shape), str(x.dtype), str(x.device)) if isinstance(x, torch.Tensor) \
            else repr(x)
    return (method, tuple(sig(x) for x in inputs),
            tuple(m.training for m in model.modules()),
            tuple((n, tuple(p.shape)) for n, p in model.named_parameters(remove_duplicate=False)),
            tuple((n, tuple(p.shape)) for n, p in model.named_buffers()))


def clear_cache() -> None:
    """Forget every cached traced graph."""
    _CACHE.clear()


def trace(model: nn.Module, example_inputs: tuple, method: str = "auto",
          cache: bool = True) -> TracedGraph:
    """Trace ``model`` on ``example_inputs``.

    ``method``: ``"auto"`` (:data:`AUTO_ORDER`: export, then fx, then the forward recording)
    or one of ``"export"``, ``"fx"``, ``"forward"``. The model is run but not modified. The
    graph is cached per model and :func:`_signature` (``cache=False`` retraces).
    """
    if not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    key = _signature(model, example_inputs, method)
    if cache and key in _CACHE.get(model, {}):
        return _CACHE[model][key]
    g = _trace_uncached(model, example_inputs, method)
    if cache:
        _CACHE.setdefault(model, {})[key] = g
    return g


def _trace_uncached(model: nn.Module, example_inputs: tuple, method: str) -> TracedGraph:
    order = list(AUTO_ORDER) if method == "auto" else [method]
    if any(m not in _FRONT_ENDS for m in order):
        raise ValueError(f"unknown tracing method {method!r}; use auto, export, fx or forward")
    errors = []
    unsupported: UnsupportedOpError | None = None
    for m in order:
        try:
            g = _FRONT_ENDS[m](model, example_inputs)
            if errors:
                g.notes.append("earlier front ends failed: " + "; ".join(errors))
            return g
        except UnsupportedOpError as e:
            unsupported = unsupported or e
            errors.append(f"{m}: {e}")
        except Exception as e:  # noqa: BLE001 - any tracer failure moves to the next one
            errors.append(f"{m}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if unsupported is not None and len(order) > 1:
        raise UnsupportedOpError(unsupported.op, unsupported.module,
                                 "no front end could handle the model (" + "; ".join(errors)
                                 + ")")
    if unsupported is not None:
        raise unsupported
    raise TracingError("model could not be traced: " + "; ".join(errors))

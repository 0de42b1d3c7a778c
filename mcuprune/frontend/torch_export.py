"""PyTorch models into the IR: walk a ``torch.export`` graph and map its aten ops onto IR layers.

``torch.export`` traces a module into a flat graph of aten ops with the parameters lifted out as
graph inputs, so the importer needs no knowledge of the module's Python code: it reads the graph
in execution order and turns each op into a layer, or folds it into one. Both forms torch hands
out are read: the graph ``torch.export.export`` returns (``aten.conv2d``, ``aten.batch_norm``,
``aten.linear``) and the core-ATen graph after ``run_decompositions()`` (``aten.convolution``,
``aten._native_batch_norm_legit_no_training``, ``aten.addmm`` with a permuted weight).

What the firmware runs decides what is folded away rather than kept:

* batch norm in inference form is an affine map per channel, so it is folded into the conv,
  depthwise conv or linear that produces its input (the int8 kernels have no batch norm);
* ReLU, ReLU6, hardtanh and clamp become the producing layer's fused ``clamp`` (TFLite-style
  fused activations): into a conv, depthwise conv, linear, add or pooling layer; through a max
  pool or a reshape into the layer before it when that one can take it, because a monotone clamp
  commutes with a max and with a reshape (and the int8 range of the conv's output is then narrower);
* zero padding that feeds only a convolution becomes the convolution's (possibly asymmetric)
  padding, so ``F.pad(x, (0, 1, 0, 1))`` before a stride-2 conv costs no extra layer;
* a flatten is implicit (a DENSE reads a feature map flattened), and the DENSE's weight columns
  are permuted from torch's CHW flatten order to the device's HWC order.

Anything else is refused with a ``UserError`` naming the aten op, the node and the module it came
from; a silently wrong model would be found only on the device. Weights are copied into the IR
layouts (see ``mcuprune.model.ir``): feature maps NCHW -> HWC, conv weights [O, I, kh, kw] ->
[O, kh, kw, I], depthwise [C*M, 1, kh, kw] -> [C*M, kh, kw, 1], dense [out, in].
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from mcuprune.errors import UserError
from mcuprune.model import ir
from mcuprune.model.ir import FloatLayer, FloatModel, Op

# The aten ops imported, by the _Importer method that maps them (torch.export's default graph and
# the core-ATen graph of run_decompositions() spell some of them differently).
_CONV = ("aten.conv2d.default", "aten.conv2d.padding", "aten.convolution.default", "aten._convolution.default")
_BATCH_NORM = ("aten.batch_norm.default", "aten._native_batch_norm_legit_no_training.default",
               "aten.native_batch_norm.default", "aten._native_batch_norm_legit.default",
               "aten._native_batch_norm_legit_functional.default")
_LINEAR = ("aten.linear.default", "aten.addmm.default", "aten.mm.default")
_CLAMP = ("aten.relu.default", "aten.relu_.default", "aten.relu6.default", "aten.hardtanh.default",
          "aten.hardtanh_.default", "aten.clamp.default", "aten.clamp_.default", "aten.clamp_min.default",
          "aten.clamp_max.default")
_ADD = ("aten.add.Tensor", "aten.add_.Tensor")
_MAXPOOL = ("aten.max_pool2d.default", "aten.max_pool2d_with_indices.default")
_AVGPOOL = ("aten.avg_pool2d.default",)
_ADAPTIVE = ("aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default")
_MEAN = ("aten.mean.dim",)
_SOFTMAX = ("aten.softmax.int", "aten._softmax.default")
_PAD = ("aten.constant_pad_nd.default", "aten.pad.default")
_RESHAPE = ("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.flatten.using_ints",
            "aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default", "aten.unsqueeze.default")
# ops that do nothing at inference time: they pass their input through
_PASS = ("aten.dropout.default", "aten.feature_dropout.default", "aten.alpha_dropout.default",
         "aten.native_dropout.default", "aten.clone.default", "aten.contiguous.default", "aten.detach.default",
         "aten.alias.default", "aten._to_copy.default", "aten.to.dtype")
# ops that check shapes or dtypes while tracing and compute nothing
_ASSERT = ("aten._assert_tensor_metadata.default", "aten._assert_scalar.default", "aten._assert_async.msg",
           "aten.sym_constrain_range_for_size.default")

SUPPORTED_OPS: tuple[str, ...] = (_CONV + _BATCH_NORM + _LINEAR + _CLAMP + _ADD + _MAXPOOL + _AVGPOOL + _ADAPTIVE
                                  + _MEAN + _SOFTMAX + _PAD + _RESHAPE + _PASS + _ASSERT)

# Layers a fused clamp lives in (TFLite's fused activations), and the layers a clamp moves through to
# the layer before them, because a monotone clamp commutes with a max and with a reshape. Moving it
# into the conv before a max pool narrows the conv's output range, which int8 quantization uses.
_CLAMP_HOSTS = (Op.CONV2D, Op.DEPTHWISE_CONV2D, Op.DENSE, Op.ADD)
_CLAMP_COMMUTES = (Op.MAXPOOL2D, Op.RESHAPE)
_CLAMP_POOL_HOSTS = (Op.MAXPOOL2D, Op.AVGPOOL2D)  # when the clamp cannot move further back


@dataclass(frozen=True)
class _Value:
    """What a graph node that computes from the input holds, in IR terms.

    `tensor` names the IR tensor (a layer's name, or ir.INPUT) whose bytes are this value, in the
    IR shape `ir_shape`; `torch_shape` is the node's shape in torch, batch first. They differ after
    an implicit flatten: a (N, C*H*W) torch value can be the (H, W, C) map's bytes, whose order is
    HWC where torch's is CHW -- `chw_map` is then that (H, W, C), and a DENSE reading the value
    permutes its weight columns. `exclusive` says that every node between the layer that wrote
    `tensor` and this one had a single reader, so a clamp or batch norm here may be folded into it.
    """

    tensor: str
    ir_shape: tuple[int, ...]
    torch_shape: tuple[int, ...]
    chw_map: tuple[int, int, int] | None = None
    exclusive: bool = False


@dataclass(frozen=True)
class _Tuple:
    """A node that returns several tensors (batch norm, max pool with indices): only item 0 is used."""

    first: _Value


def _hwc(torch_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """IR shape of an NCHW or (N, F) torch shape, without the batch axis; None for other ranks."""
    if len(torch_shape) == 4:
        _, c, h, w = torch_shape
        return (h, w, c)
    if len(torch_shape) == 2:
        return (torch_shape[1],)
    return None


def _pair(value: Any, default: tuple[int, int] | None = None) -> tuple[int, int]:
    """A torch int-or-list argument (kernel, stride, padding, dilation) as a (y, x) pair."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        if default is None:
            raise ValueError("missing pair argument")
        return default
    if isinstance(value, (list, tuple)):
        return (int(value[0]), int(value[0])) if len(value) == 1 else (int(value[0]), int(value[1]))
    return (int(value), int(value))


def _module_path(node: torch.fx.Node) -> str:
    """Dotted path of the innermost module the node was traced in ('' for the root module)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, _cls = list(stack.values())[-1]
    return str(path)


def _module_class(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    _path, cls = list(stack.values())[-1]
    return cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"


def _where(node: torch.fx.Node) -> str:
    """'aten.x.default at node 'n' (module a.b)': where in the user's model a message points."""
    path = _module_path(node)
    return f"{node.target} at node '{node.name}'" + (f" (module {path})" if path else "")


def _arguments(node: torch.fx.Node) -> dict[str, Any]:
    """The op's arguments by schema name, defaults filled in, so handlers need not know which
    arguments torch.export happened to write positionally."""
    schema = node.target._schema  # type: ignore[union-attr]
    out: dict[str, Any] = {}
    positional = [a for a in schema.arguments if not a.kwarg_only]
    for i, arg in enumerate(schema.arguments):
        if not arg.kwarg_only and i < len(node.args) and i < len(positional):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


def _compose_clamps(inner: tuple[float, float], outer: tuple[float, float]) -> tuple[float, float] | None:
    """outer(inner(x)) as one clamp, or None when the ranges do not overlap (a constant output)."""
    lo, hi = max(inner[0], outer[0]), min(inner[1], outer[1])
    return (lo, hi) if lo <= hi else None


class _Importer:
    """One pass over an ExportedProgram's graph, building the IR layers in execution order."""

    def __init__(self, ep: ExportedProgram, name: str, masks: dict[str, np.ndarray] | None = None) -> None:
        self.ep = ep
        self.name = name
        self.masks = dict(masks or {})  # parameter name (conv.weight) -> pruning mask in torch's layout
        self.used_masks: set[str] = set()
        self.parameters: dict[torch.fx.Node, str] = {}  # lifted parameter node -> its name in the module
        self.layers: dict[str, FloatLayer] = {}  # insertion order = execution order
        self.input_exclusive: dict[str, bool] = {}  # layer -> its input tensor is read by it alone
        self.values: dict[torch.fx.Node, _Value | _Tuple] = {}
        self.consts: dict[torch.fx.Node, Any] = {}
        self.used_names: set[str] = {ir.INPUT}
        self.input_shape: tuple[int, ...] = ()
        self.order = {node: i for i, node in enumerate(ep.graph_module.graph.nodes)}
        groups = ((_CONV, self._conv), (_BATCH_NORM, self._batch_norm), (_LINEAR, self._linear),
                  (_CLAMP, self._clamp), (_ADD, self._add), (_MAXPOOL, self._maxpool), (_AVGPOOL, self._avgpool),
                  (_ADAPTIVE, self._adaptive_avgpool), (_MEAN, self._mean), (_SOFTMAX, self._softmax),
                  (_PAD, self._pad), (_RESHAPE, self._reshape), (_PASS, self._pass))
        self.handlers = {name: handler for names, handler in groups for name in names}

    # --- the walk ------------------------------------------------------------------------------

    def run(self) -> FloatModel:
        self._check_signature()
        graph = self.ep.graph_module.graph
        user_input = self.ep.graph_signature.user_inputs[0]
        output_node: torch.fx.Node | None = None
        for node in graph.nodes:
            self._check_static(node)
            if node.op == "placeholder":
                if node.name == user_input:
                    self._input(node)
                else:
                    self.consts[node] = self._lifted(node)
            elif node.op == "get_attr":
                self.consts[node] = getattr(self.ep.graph_module, str(node.target))
            elif node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                output_node = node
            else:
                raise UserError(f"graph node '{node.name}' is a {node.op}, which torch.export graphs do not hold; "
                                f"export the model again with torch.export.export")
        assert output_node is not None
        return self._finish(output_node)

    def _check_signature(self) -> None:
        sig = self.ep.graph_signature
        mutated = [s.target for s in sig.output_specs if s.kind == OutputKind.BUFFER_MUTATION]
        if mutated:
            raise UserError(f"model {self.name}: the exported graph updates buffers ({', '.join(mutated[:3])}): it "
                            f"was exported in training mode; call module.eval() before torch.export.export")
        users = [s for s in sig.input_specs if s.kind == InputKind.USER_INPUT]
        if len(users) != 1 or len(sig.user_inputs) != 1:
            raise UserError(f"model {self.name} takes {len(users)} inputs; mcuprune imports models with one input "
                            f"tensor (N, C, H, W) or (N, F)")
        outputs = [s for s in sig.output_specs if s.kind == OutputKind.USER_OUTPUT]
        if len(outputs) != 1:
            raise UserError(f"model {self.name} returns {len(outputs)} outputs; mcuprune imports models with one "
                            f"output tensor")

    def _check_static(self, node: torch.fx.Node) -> None:
        """Refuse symbolic shapes. (Not ep.range_constraints: run_decompositions can leave symbols there
        that no shape uses.)"""
        val = node.meta.get("val")
        shape = getattr(val, "shape", None)
        if isinstance(val, torch.SymInt) or (shape is not None and not all(isinstance(d, int) for d in shape)):
            raise UserError(f"node '{node.name}' has a dynamic shape {tuple(shape) if shape is not None else val}; "
                            f"export the model with a fixed example input and no dynamic_shapes")

    def _input(self, node: torch.fx.Node) -> None:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise UserError(f"model {self.name}: input '{node.name}' is not a tensor")
        if val.dtype != torch.float32:
            raise UserError(f"model {self.name}: input '{node.name}' is {val.dtype}; mcuprune imports float32 "
                            f"inputs (the quantizer picks the int8 input scale)")
        shape = tuple(val.shape)
        hwc = _hwc(shape)
        if hwc is None:
            raise UserError(f"model {self.name}: input '{node.name}' has shape {shape}; mcuprune imports an "
                            f"(N, C, H, W) image or an (N, F) feature vector")
        self.input_shape = hwc
        self.values[node] = _Value(ir.INPUT, hwc, shape)

    def _lifted(self, node: torch.fx.Node) -> Any:
        """A parameter, buffer or constant lifted out of the module as a graph input."""
        sig = self.ep.graph_signature
        if node.name in sig.inputs_to_parameters:
            self.parameters[node] = sig.inputs_to_parameters[node.name]
        for table in (sig.inputs_to_parameters, sig.inputs_to_buffers, sig.inputs_to_lifted_tensor_constants):
            if node.name in table:
                key = table[node.name]
                if key in self.ep.state_dict:
                    return self.ep.state_dict[key]
                if key in self.ep.constants:
                    return self.ep.constants[key]
                raise UserError(f"model {self.name}: no value stored for '{key}' (graph input '{node.name}')")
        raise UserError(f"model {self.name}: graph input '{node.name}' is neither the model input nor a parameter, "
                        f"buffer or constant; mcuprune imports models with one input tensor")

    def _call(self, node: torch.fx.Node) -> None:
        if node.target is operator.getitem:
            self._getitem(node)
            return
        target = str(node.target)
        if target in _ASSERT:
            return
        if all(a in self.consts for a in node.all_input_nodes):
            # Computed from weights alone (a transposed linear weight, a folded constant): run it now.
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda a: self.consts[a])
            self.consts[node] = node.target(*args, **kwargs)  # type: ignore[operator]
            return
        handler = self.handlers.get(target) if isinstance(node.target, torch._ops.OpOverload) else None
        if handler is None:
            raise UserError(f"unsupported op {_where(node)}; mcuprune imports: {', '.join(SUPPORTED_OPS)}")
        first = node.target._schema.arguments[0].alias_info  # type: ignore[union-attr]
        if first is not None and first.is_write:  # x.add_(y), relu_: the op overwrites its input
            self._check_in_place(node)
        handler(node)

    def _check_in_place(self, node: torch.fx.Node) -> None:
        """An in-place op (x += y, relu_) is read as a new tensor, which is right only if nothing reads
        the overwritten tensor afterwards (export keeps in-place ops; the node is the updated tensor)."""
        mutated = node.args[0]
        later = [u.name for u in getattr(mutated, "users", ()) if self.order[u] > self.order[node]]
        if later:
            raise UserError(f"{_where(node)} overwrites '{mutated}', which {', '.join(later)} read(s) afterwards; "
                            f"mcuprune imports in-place ops whose input is not read again (use x = x + y)")

    # --- helpers -------------------------------------------------------------------------------

    def _value(self, arg: Any, node: torch.fx.Node) -> _Value:
        """The input-dependent tensor an op reads (an error when it is a constant or a tuple)."""
        if isinstance(arg, torch.fx.Node) and isinstance(self.values.get(arg), _Value):
            return self.values[arg]  # type: ignore[return-value]
        raise UserError(f"{_where(node)} reads {arg.name if isinstance(arg, torch.fx.Node) else arg!r}, which does "
                        f"not depend on the model input; mcuprune imports ops over the input's feature maps only")

    def _feature_map(self, arg: Any, node: torch.fx.Node) -> _Value:
        """An NCHW value whose IR tensor is the (H, W, C) map (the ops over windows need one)."""
        value = self._value(arg, node)
        if len(value.torch_shape) != 4 or value.ir_shape != _hwc(value.torch_shape):
            raise UserError(f"{_where(node)} reads a tensor of shape {value.torch_shape}; mcuprune maps it only "
                            f"over an (N, C, H, W) feature map")
        return value

    def _const(self, arg: Any, node: torch.fx.Node, what: str) -> np.ndarray | None:
        """A weight-like argument as float32 numpy (None stays None)."""
        if arg is None:
            return None
        if isinstance(arg, torch.fx.Node) and arg in self.consts:
            return self.consts[arg].detach().to(torch.float32).cpu().numpy()
        raise UserError(f"{_where(node)}: its {what} is computed from the model input; mcuprune imports "
                        f"{what}s that are parameters or constants")

    def _mask(self, arg: Any, shape: tuple[int, ...]) -> np.ndarray | None:
        """The pruning mask given for the parameter behind a weight argument (followed through the
        transposes a decomposed linear puts on it), in torch's layout, or None."""
        while isinstance(arg, torch.fx.Node) and arg not in self.parameters and arg.op == "call_function":
            arg = arg.args[0] if arg.args else None
        name = self.parameters.get(arg) if isinstance(arg, torch.fx.Node) else None
        if name is None or name not in self.masks:
            return None
        mask = np.asarray(self.masks[name], dtype=bool)
        if mask.shape != shape:
            raise UserError(f"model {self.name}: the mask for {name} has shape {mask.shape}, the weight {shape}")
        self.used_masks.add(name)
        return mask

    def _exclusive(self, arg: Any) -> bool:
        """The layer behind this argument has it as its only reader: a fold into it changes nothing else."""
        value = self.values.get(arg)
        return isinstance(value, _Value) and value.exclusive and len(arg.users) == 1

    def _layer_name(self, node: torch.fx.Node) -> str:
        """Readable and unique: a torch layer's module path (layer1.0.conv2 -> layer1_0_conv2), else the
        enclosing module's path plus the op (layer1_0_add), else the node's name."""
        path = _module_path(node).replace(".", "_")
        stem = re.sub(r"_\d+$", "", node.name).rstrip("_")  # add__1 (an in-place add) -> add
        if path and _module_class(node).startswith("torch.nn.modules."):
            base = path
        elif path:
            base = f"{path}_{stem}"
        else:
            base = node.name
        base = re.sub(r"\W", "_", base)
        if base[0].isdigit():  # a layer of an nn.Sequential at the root: "0" -> "conv2d_0"
            base = f"{stem}_{base}"
        return self._unique(base)

    def _emit(self, node: torch.fx.Node, source: _Value, op: Op, *, inputs: tuple[str, ...] | None = None,
              in_shapes: list[tuple[int, ...]] | None = None, input_exclusive: bool = False,
              out_torch: tuple[int, ...] | None = None, **fields: Any) -> None:
        """Add a layer for `node` that reads `source`, and check its IR shape against torch's."""
        torch_shape = tuple(out_torch if out_torch is not None else node.meta["val"].shape)
        out_shape = fields.pop("out_shape", None) or _hwc(torch_shape)
        layer = FloatLayer(name=self._layer_name(node), op=op, in_shape=source.ir_shape, out_shape=out_shape,
                           inputs=inputs or (source.tensor,), **fields)
        try:
            want = ir.expected_out_shape(layer, in_shapes or [source.ir_shape])
        except ir.GraphError as exc:
            raise UserError(f"{_where(node)}: {exc}") from exc
        if tuple(want) != tuple(out_shape):
            raise UserError(f"{_where(node)}: torch gives shape {torch_shape}, the IR's {op.value} gives {want} "
                            f"(H, W, C); the op's arguments have no IR equivalent")
        self.layers[layer.name] = layer
        self.input_exclusive[layer.name] = input_exclusive
        self.values[node] = _Value(layer.name, tuple(out_shape), torch_shape, None, True)

    def _alias(self, node: torch.fx.Node, value: _Value, **changes: Any) -> None:
        """`node` computes nothing: it is `value` (possibly seen with another torch shape)."""
        arg = node.all_input_nodes[0]
        exclusive = value.exclusive and len(arg.users) == 1
        self.values[node] = replace(value, exclusive=exclusive, **changes)

    # --- op handlers ---------------------------------------------------------------------------

    def _getitem(self, node: torch.fx.Node) -> None:
        source, index = node.args
        held = self.values.get(source)  # type: ignore[arg-type]
        if source in self.consts:
            self.consts[node] = self.consts[source][index]  # type: ignore[index]
            return
        if not isinstance(held, _Tuple):
            raise UserError(f"getitem at node '{node.name}' indexes {source}, which is not a multi-output op")
        if index != 0:
            if node.users:
                where = _where(source)  # type: ignore[arg-type]
                raise UserError(f"node '{node.name}' reads output {index} of {where}; mcuprune imports only the "
                                f"op's first output")
            return
        others = [u for u in source.users if u is not node and u.users]  # type: ignore[union-attr]
        self.values[node] = replace(held.first, exclusive=held.first.exclusive and not others)

    def _pass(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        target = str(node.target)
        value = self._value(node.args[0], node)
        if "dropout" in target and a.get("train"):
            raise UserError(f"{_where(node)} is dropout in training mode; call module.eval() before exporting")
        if target in ("aten._to_copy.default", "aten.to.dtype") and a.get("dtype") not in (None, torch.float32):
            raise UserError(f"{_where(node)} converts to {a.get('dtype')}; mcuprune imports float32 models")
        if target == "aten.native_dropout.default":
            self.values[node] = _Tuple(replace(value, exclusive=value.exclusive and len(node.args[0].users) == 1))
            return
        self._alias(node, value)

    def _conv(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        x = self._feature_map(a["input"], node)
        if a.get("transposed"):
            raise UserError(f"{_where(node)} is a transposed convolution; mcuprune imports conv2d only")
        w = self._const(a["weight"], node, "weight")
        assert w is not None
        if w.ndim != 4:
            raise UserError(f"{_where(node)} has a {w.ndim - 2}-D kernel; mcuprune imports 2-D convolutions")
        c_out, _, k_h, k_w = w.shape
        bias = self._const(a["bias"], node, "bias")
        stride, dilation = _pair(a["stride"], (1, 1)), _pair(a["dilation"], (1, 1))
        pad = a["padding"]
        if isinstance(pad, str):
            if pad == "valid":
                padding = (0, 0, 0, 0)
            else:  # "same" (stride 1): torch puts the odd extra row/column at the bottom/right
                total_y, total_x = dilation[0] * (k_h - 1), dilation[1] * (k_w - 1)
                padding = (total_y // 2, total_y - total_y // 2, total_x // 2, total_x - total_x // 2)
        else:
            pad_y, pad_x = _pair(pad, (0, 0))
            padding = (pad_y, pad_y, pad_x, pad_x)
        groups, c_in = int(a["groups"]), x.ir_shape[2]
        if groups == 1:
            op, multiplier = Op.CONV2D, 1
        elif groups == c_in and c_out % c_in == 0:
            op, multiplier = Op.DEPTHWISE_CONV2D, c_out // c_in
        else:
            raise UserError(f"{_where(node)} is a grouped convolution (groups={groups}, {c_in} input channels); "
                            f"mcuprune imports groups=1 (conv2d) and groups=in_channels (depthwise) only")
        source, input_exclusive = x, self._exclusive(a["input"])
        pad_layer = self.layers.get(x.tensor)
        if pad_layer is not None and pad_layer.op is Op.PAD and input_exclusive:
            # Zero padding read only by this conv is the conv's own padding: one layer fewer.
            padding = tuple(p + q for p, q in zip(padding, pad_layer.padding, strict=True))  # type: ignore[assignment]
            source = _Value(pad_layer.inputs[0], tuple(pad_layer.in_shape), x.torch_shape)
            input_exclusive = self.input_exclusive[pad_layer.name]
            del self.layers[pad_layer.name]
        weights = np.ascontiguousarray(w.transpose(0, 2, 3, 1), dtype=np.float32)
        mask = self._mask(a["weight"], w.shape)
        mask = None if mask is None else np.ascontiguousarray(mask.transpose(0, 2, 3, 1))
        bias = np.zeros(c_out, np.float32) if bias is None else bias.astype(np.float32)
        self._emit(node, source, op, input_exclusive=input_exclusive, weights=weights, bias=bias, stride=stride,
                   padding=padding, dilation=dilation, depth_multiplier=multiplier, mask=mask)

    def _batch_norm(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        target = str(node.target)
        if a.get("training") and target != "aten._native_batch_norm_legit_no_training.default":
            raise UserError(f"{_where(node)} is batch norm in training mode (batch statistics); call module.eval() "
                            f"before torch.export.export")
        x = self._value(a["input"], node)
        mean = self._const(a["running_mean"], node, "running mean")
        var = self._const(a["running_var"], node, "running variance")
        if mean is None or var is None:
            raise UserError(f"{_where(node)} has no running statistics (track_running_stats=False); mcuprune folds "
                            f"batch norm with running statistics only")
        channels = x.torch_shape[1]
        gamma = self._const(a["weight"], node, "weight")
        beta = self._const(a["bias"], node, "bias")
        gamma = np.ones(channels, np.float32) if gamma is None else gamma
        beta = np.zeros(channels, np.float32) if beta is None else beta
        layer = self.layers.get(x.tensor)
        if (layer is None or layer.op not in ir.WEIGHTED_OPS or not self._exclusive(a["input"])
                or layer.clamp != ir.UNBOUNDED or x.ir_shape != _hwc(x.torch_shape)):
            raise UserError(f"{_where(node)} does not directly follow a conv2d, depthwise conv or linear whose "
                            f"output it alone reads; mcuprune folds batch norm into that layer and has no "
                            f"batch-norm layer of its own")
        # Inference batch norm is y = (x - mean) * s + beta with s = gamma / sqrt(var + eps): scale the
        # producing layer's output channels (axis 0 of every IR weight layout) and shift its bias.
        scale = (gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + float(a["eps"])))
        weights = (layer.weights.astype(np.float64) * scale.reshape(-1, *([1] * (layer.weights.ndim - 1))))
        bias = (layer.bias.astype(np.float64) - mean) * scale + beta
        self.layers[layer.name] = replace(layer, weights=weights.astype(np.float32), bias=bias.astype(np.float32))
        folded = replace(x, exclusive=True)
        self.values[node] = folded if target == "aten.batch_norm.default" else _Tuple(folded)

    def _linear(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        target = str(node.target)
        if target == "aten.linear.default":
            arg, w, bias = a["input"], self._const(a["weight"], node, "weight"), self._const(a["bias"], node, "bias")
            weight_arg = a["weight"]
        else:  # addmm(bias, x, w.T) and mm(x, w.T): the decomposed forms of linear
            arg = a["mat1"] if target == "aten.addmm.default" else a["self"]
            w_t = self._const(a["mat2"], node, "weight")
            assert w_t is not None
            w = w_t.T
            weight_arg = a["mat2"]
            bias = self._const(a["self"], node, "bias") if target == "aten.addmm.default" else None
            if target == "aten.addmm.default" and (float(a["beta"]) != 1.0 or float(a["alpha"]) != 1.0):
                raise UserError(f"{_where(node)} scales its terms (beta={a['beta']}, alpha={a['alpha']}); mcuprune "
                                f"imports addmm as a linear layer (beta = alpha = 1)")
        x = self._value(arg, node)
        assert w is not None
        if len(x.torch_shape) != 2 or w.ndim != 2:
            raise UserError(f"{_where(node)} reads a tensor of shape {x.torch_shape}; mcuprune imports linear layers "
                            f"over (N, F) inputs (flatten a feature map first)")
        if bias is not None and bias.size != w.shape[0]:
            raise UserError(f"{_where(node)}: bias of shape {bias.shape} is not one value per output")
        mask = self._mask(weight_arg, w.shape)
        if x.chw_map is not None:
            # torch flattened the map in C, H, W order; the device flattens H, W, C (training.py's _to_hwc)
            h, wd, c = x.chw_map
            w = w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            if mask is not None:
                mask = mask.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        weights = np.ascontiguousarray(w, dtype=np.float32)
        bias = np.zeros(w.shape[0], np.float32) if bias is None else bias.reshape(-1).astype(np.float32)
        self._emit(node, x, Op.DENSE, input_exclusive=self._exclusive(arg), weights=weights, bias=bias,
                   mask=None if mask is None else np.ascontiguousarray(mask))

    def _clamp(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        short = str(node.target).split(".")[1].rstrip("_")
        if short == "relu":
            bounds = ir.RELU
        elif short == "relu6":
            bounds = ir.RELU6
        elif short == "hardtanh":
            bounds = (float(a["min_val"]), float(a["max_val"]))
        elif short == "clamp_min":
            bounds = (float(a["min"]), ir.UNBOUNDED[1])
        elif short == "clamp_max":
            bounds = (ir.UNBOUNDED[0], float(a["max"]))
        else:
            lo, hi = a["min"], a["max"]
            bounds = (ir.UNBOUNDED[0] if lo is None else float(lo), ir.UNBOUNDED[1] if hi is None else float(hi))
        x = self._value(a["self"], node)
        host = self._clamp_host(x.tensor, self._exclusive(a["self"]))
        if host is None:
            raise UserError(f"{_where(node)} cannot be fused: mcuprune fuses an activation into the conv, "
                            f"depthwise conv, linear, add or pooling layer that produces its input (or through a "
                            f"max pool or reshape), when nothing else reads that layer's output")
        clamp = _compose_clamps(host.clamp, bounds)
        if clamp is None:
            raise UserError(f"{_where(node)} clamps to {bounds} after {host.name} clamped to {host.clamp}: the output "
                            f"is a constant")
        self.layers[host.name] = replace(host, clamp=clamp)
        self.values[node] = replace(x, exclusive=True)

    def _clamp_host(self, tensor: str, exclusive: bool) -> FloatLayer | None:
        """The layer a clamp on `tensor` fuses into, if nothing else reads it (`exclusive`): its producer,
        or through max pools and reshapes the layer before them; None if there is none."""
        layer = self.layers.get(tensor)
        if not exclusive or layer is None:
            return None
        if layer.op in _CLAMP_HOSTS:
            return layer
        if layer.op in _CLAMP_COMMUTES:
            inner = self._clamp_host(layer.inputs[0], self.input_exclusive[layer.name])
            if inner is not None:
                return inner
        return layer if layer.op in _CLAMP_POOL_HOSTS else None

    def _add(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        if float(a["alpha"]) != 1.0:
            raise UserError(f"{_where(node)} scales its second term (alpha={a['alpha']}); mcuprune imports x + y")
        if not isinstance(a["other"], torch.fx.Node) or a["other"] in self.consts:
            raise UserError(f"{_where(node)} adds a constant; mcuprune imports the sum of two tensors computed "
                            f"from the input (fold a constant into a preceding layer's bias)")
        x, y = self._value(a["self"], node), self._value(a["other"], node)
        if len(x.torch_shape) == 2 and x.chw_map is None and y.chw_map is None:
            # vectors in torch's order: one IR shape for both (a pooled (1, 1, C) map becomes (C,))
            x, y = self._flat(a["self"], x), self._flat(a["other"], y)
        if x.torch_shape != y.torch_shape or x.ir_shape != y.ir_shape or x.chw_map != y.chw_map:
            raise UserError(f"{_where(node)} adds tensors of shapes {x.torch_shape} and {y.torch_shape}; mcuprune "
                            f"imports adds of two tensors of one shape (no broadcasting)")
        self._emit(node, x, Op.ADD, inputs=(x.tensor, y.tensor), in_shapes=[x.ir_shape, y.ir_shape],
                   out_torch=x.torch_shape, out_shape=x.ir_shape)
        self.values[node] = replace(self.values[node], chw_map=x.chw_map)  # type: ignore[type-var]

    def _maxpool(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        x = self._feature_map(a["self"], node)
        window = _pair(a["kernel_size"])
        stride, padding = _pair(a["stride"], window), _pair(a["padding"], (0, 0))
        if _pair(a["dilation"], (1, 1)) != (1, 1):
            raise UserError(f"{_where(node)} has dilation {a['dilation']}; mcuprune imports max pooling with "
                            f"dilation 1")
        self._pool_ceil_mode(node, x, window, stride, padding, bool(a["ceil_mode"]))
        out = None if str(node.target) == "aten.max_pool2d.default" else tuple(node.meta["val"][0].shape)
        self._emit(node, x, Op.MAXPOOL2D, input_exclusive=self._exclusive(a["self"]), out_torch=out, window=window,
                   stride=stride, padding=(padding[0], padding[0], padding[1], padding[1]))
        if out is not None:
            self.values[node] = _Tuple(self.values[node])  # type: ignore[arg-type]

    def _pool_ceil_mode(self, node: torch.fx.Node, x: _Value, window: tuple[int, int], stride: tuple[int, int],
                        padding: tuple[int, int], ceil_mode: bool) -> None:
        """ceil_mode=True is taken only where it gives the floor-mode shape (then the two are the same op)."""
        if not ceil_mode:
            return
        h, w, _ = x.ir_shape
        floor = ir.conv_out_hw(h, w, *window, stride, (padding[0], padding[0], padding[1], padding[1]))
        val = node.meta["val"]
        shape = tuple((val[0] if isinstance(val, (tuple, list)) else val).shape)
        if tuple(shape[2:]) != tuple(floor):
            raise UserError(f"{_where(node)} uses ceil_mode=True, which adds a partial window at the edge "
                            f"({shape[2:]} instead of {floor}); mcuprune imports ceil_mode=False")

    def _avgpool(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        x = self._feature_map(a["self"], node)
        window = _pair(a["kernel_size"])
        stride, padding = _pair(a["stride"], window), _pair(a["padding"], (0, 0))
        if a["divisor_override"] is not None:
            raise UserError(f"{_where(node)} sets divisor_override={a['divisor_override']}; mcuprune's average "
                            f"pooling divides by the number of taps")
        if a["count_include_pad"] and padding != (0, 0):
            raise UserError(f"{_where(node)} pads with count_include_pad=True: torch divides by the whole window "
                            f"including padding, the int8 average pool (TFLite) by the in-bounds taps only; use "
                            f"count_include_pad=False")
        self._pool_ceil_mode(node, x, window, stride, padding, bool(a["ceil_mode"]))
        self._emit(node, x, Op.AVGPOOL2D, window=window, stride=stride,
                   padding=(padding[0], padding[0], padding[1], padding[1]))

    def _adaptive_avgpool(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        x = self._feature_map(a["self"], node)
        h, w, _ = x.ir_shape
        out_h, out_w = _pair(a["output_size"])
        if (out_h, out_w) == (1, 1):
            self._emit(node, x, Op.MEAN)
        elif h % out_h == 0 and w % out_w == 0:  # equal windows that tile the map: a plain average pool
            window = (h // out_h, w // out_w)
            self._emit(node, x, Op.AVGPOOL2D, window=window, stride=window)
        else:
            raise UserError(f"{_where(node)} pools a {h}x{w} map to {out_h}x{out_w}, whose windows differ in size; "
                            f"mcuprune imports adaptive average pooling to 1x1 or to a divisor of the map size")

    def _mean(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        x = self._feature_map(a["self"], node)
        dims = {int(d) % 4 for d in (a["dim"] or ())}
        if dims != {2, 3} or a.get("dtype") not in (None, torch.float32):
            raise UserError(f"{_where(node)} averages over dims {a['dim']}; mcuprune imports the mean over H and W "
                            f"(dims 2, 3) of an (N, C, H, W) map")
        self._emit(node, x, Op.MEAN)  # out (1, 1, C) with keepdim, (C,) without: the shape torch gives

    def _softmax(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        x = self._value(a["self"], node)
        rank, dim = len(x.torch_shape), int(a["dim"]) % len(x.torch_shape)
        if a.get("dtype") not in (None, torch.float32) or a.get("half_to_float"):
            raise UserError(f"{_where(node)} changes the dtype; mcuprune imports float32 softmax")
        if rank == 4 and dim == 1 and x.ir_shape == _hwc(x.torch_shape):
            source = x  # over channels: the IR's last axis
        elif rank == 2 and dim == 1:
            source = self._flat(a["self"], x)
        else:
            raise UserError(f"{_where(node)} is over dim {a['dim']} of {x.torch_shape}; mcuprune imports softmax "
                            f"over the features of (N, F) or the channels of (N, C, H, W)")
        self._emit(node, source, Op.SOFTMAX, out_torch=x.torch_shape, out_shape=source.ir_shape)
        self.values[node] = replace(self.values[node], chw_map=source.chw_map)  # type: ignore[type-var]

    def _flat(self, arg: torch.fx.Node, value: _Value) -> _Value:
        """`value` (the node `arg`) as a flat (F,) IR tensor, through an explicit RESHAPE when its IR
        tensor is a map (a no-op on the bytes; the op that needs it computes over the last axis)."""
        if len(value.ir_shape) == 1:
            return value
        flat = (ir.shape_product(value.ir_shape),)
        layer = self.layers.get(value.tensor)
        if layer is not None and layer.op is Op.MEAN and self._exclusive(arg):
            self.layers[layer.name] = replace(layer, out_shape=flat)  # its only reader wants (C,)
            return replace(value, ir_shape=flat)
        name = self._unique(f"{value.tensor}_flat")
        self.layers[name] = FloatLayer(name, Op.RESHAPE, value.ir_shape, flat, inputs=(value.tensor,))
        self.input_exclusive[name] = self._exclusive(arg)
        return _Value(name, flat, value.torch_shape, value.chw_map, False)

    def _unique(self, base: str) -> str:
        """`base`, or `base_1`, `base_2`, ...: the first not yet taken (the input's name is taken)."""
        name, i = base, 1
        while name in self.used_names:
            name, i = f"{base}_{i}", i + 1
        self.used_names.add(name)
        return name

    def _pad(self, node: torch.fx.Node) -> None:
        a = _arguments(node)
        x = self._feature_map(a["self"], node)
        pads = [int(p) for p in a["pad"]]
        value = a.get("value")
        if a.get("mode", "constant") != "constant" or (value is not None and float(value) != 0.0):
            raise UserError(f"{_where(node)} pads with mode={a.get('mode', 'constant')!r}, value={value}; mcuprune "
                            f"imports zero padding")
        if len(pads) % 2 or len(pads) < 2 or any(p != 0 for p in pads[4:]) or any(p < 0 for p in pads):
            raise UserError(f"{_where(node)} pads {pads}; mcuprune imports non-negative zero padding of H and W")
        left, right = pads[0], pads[1]
        top, bottom = (pads[2], pads[3]) if len(pads) >= 4 else (0, 0)
        self._emit(node, x, Op.PAD, input_exclusive=self._exclusive(a["self"]), padding=(top, bottom, left, right))

    def _reshape(self, node: torch.fx.Node) -> None:
        x = self._value(node.args[0], node)
        target = tuple(node.meta["val"].shape)
        if not target or target[0] != x.torch_shape[0]:
            raise UserError(f"{_where(node)} reshapes {x.torch_shape} to {target}, across the batch dimension; "
                            f"keep it (x.flatten(1), x.view(x.size(0), -1))")
        if target == x.torch_shape:
            self._alias(node, x)
            return
        ordered = self._torch_order_matches(x)
        if len(target) == 2:
            # A flatten: the IR keeps the map's bytes (HWC) and remembers torch's order for the DENSE.
            chw = x.chw_map if len(x.torch_shape) == 2 else (None if ordered else x.ir_shape)
            self._alias(node, x, torch_shape=target, chw_map=chw)
            return
        hwc = _hwc(target)
        if hwc is None and ordered:  # e.g. (N, C, 1) between two squeezes: passed on to a shape the IR has
            self._alias(node, x, torch_shape=target, chw_map=None)
            return
        if hwc is not None and (x.chw_map == hwc or (x.chw_map is None and x.ir_shape == hwc and ordered)):
            self._alias(node, x, torch_shape=target, chw_map=None)  # back to the map it was flattened from
            return
        if hwc is not None and ordered and (hwc[0] * hwc[1] == 1 or hwc[2] == 1):
            self._emit(node, x, Op.RESHAPE, input_exclusive=self._exclusive(node.args[0]))
            return
        raise UserError(f"{_where(node)} reshapes {x.torch_shape} to {target}; mcuprune imports flattening a "
                        f"feature map to (N, F) and reshapes that keep the element order of both CHW and HWC")

    @staticmethod
    def _torch_order_matches(value: _Value) -> bool:
        """The IR bytes of `value` are in torch's row-major order of its shape (CHW == HWC here)."""
        if len(value.torch_shape) != 4:
            return value.chw_map is None  # a flatten sets chw_map unless the two orders agree
        _, c, h, w = value.torch_shape
        return value.ir_shape == (h, w, c) and (h * w == 1 or c == 1)

    # --- the end -------------------------------------------------------------------------------

    def _finish(self, output_node: torch.fx.Node) -> FloatModel:
        outputs = output_node.args[0]
        sig = self.ep.graph_signature
        index = [i for i, s in enumerate(sig.output_specs) if s.kind == OutputKind.USER_OUTPUT][0]
        out = outputs[index] if isinstance(outputs, (tuple, list)) else outputs
        if not isinstance(out, torch.fx.Node) or not isinstance(self.values.get(out), _Value):
            raise UserError(f"model {self.name}: the output does not depend on the input, or is not a tensor")
        value: _Value = self.values[out]  # type: ignore[assignment]
        if value.tensor == ir.INPUT:
            raise UserError(f"model {self.name} has no layers: its output is its input")
        if value.chw_map is not None:
            raise UserError(f"model {self.name}: the output is a flattened {value.chw_map} (H, W, C) feature map, "
                            f"whose element order differs between torch (CHW) and the device (HWC); end the model "
                            f"with a linear layer or a pool to 1x1")
        want = _hwc(value.torch_shape)
        if want is None:
            raise UserError(f"model {self.name}: the output has shape {value.torch_shape}; mcuprune imports outputs "
                            f"of shape (N, F) or (N, C, H, W)")
        tensor = value.tensor
        if value.ir_shape != want:
            tensor = self._unique(f"{value.tensor}_{'flat' if len(want) == 1 else 'reshape'}")
            self.layers[tensor] = FloatLayer(tensor, Op.RESHAPE, value.ir_shape, want, inputs=(value.tensor,))
        layers = self._live(tensor)
        model = FloatModel(name=self.name, input_shape=self.input_shape, num_classes=ir.shape_product(want),
                           layers=tuple(layers))
        ir.verify(model)
        return model

    def _live(self, output: str) -> list[FloatLayer]:
        """The layers the output depends on, in execution order, ending with the output's."""
        needed, stack = set(), [output]
        while stack:
            name = stack.pop()
            if name in needed or name == ir.INPUT:
                continue
            needed.add(name)
            stack.extend(self.layers[name].inputs)
        order = [layer for name, layer in self.layers.items() if name in needed]
        assert order[-1].name == output
        return order


def import_exported(ep: ExportedProgram, name: str, masks: dict[str, np.ndarray] | None = None) -> FloatModel:
    """An ExportedProgram (from torch.export.export or torch.export.load) as a verified FloatModel.

    `masks`: pruning masks by weight parameter name (e.g. "stage1.conv1.weight"), in torch's layout;
    each becomes the mask of the layer that weight goes into, converted like the weight."""
    importer = _Importer(ep, name, masks)
    model = importer.run()
    unused = sorted(set(importer.masks) - importer.used_masks)
    if unused:
        raise UserError(f"model {name}: masks given for {', '.join(unused)}, which is no imported conv or linear "
                        "weight")
    return model


def import_module(module: torch.nn.Module, example_input: torch.Tensor, name: str | None = None,
                  masks: dict[str, np.ndarray] | None = None) -> FloatModel:
    """Export `module` in eval mode with `example_input` (NCHW float32, batch first) and import it."""
    with torch.no_grad():
        ep = torch.export.export(module.eval(), (example_input,))
    return import_exported(ep, name or type(module).__name__.lower(), masks)


def load_pt2(path: str | Path) -> FloatModel:
    """A model saved with torch.export.save, named after the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a .pt2 file written by torch.export.save)")
    if path.suffix != ".pt2":
        raise UserError(f"{path}: not a .pt2 file (expected a file written by torch.export.save)")
    try:
        ep = torch.export.load(path)
    except Exception as exc:  # torch raises many types for a damaged archive; the user needs one line
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"{path}: cannot be read as a torch.export .pt2 file ({type(exc).__name__}: "
                        f"{detail[:200]})") from exc
    return import_exported(ep, re.sub(r"\W", "_", path.stem))

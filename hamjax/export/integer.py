"""Output quantization for int8 convolutions and ``Gemm`` s, so onnxruntime runs them as integer kernels.

onnxruntime runs a convolution as ``QLinearConv`` only in the layout its own
quantizer emits, ``DQ(x), DQ(w)[, DQ(int32 bias)] -> Conv -> QuantizeLinear``:
without a quantized output it stays a float ``Conv`` on dequantized inputs.
:func:`quantize_outputs` gives a convolution (or a ``Gemm``) that output
quantization *exactly*, without a new calibrated range: when everything
between the op and the next quantizer is a per-channel affine map (a bias,
an inference batch norm: folded into the op's weight scales and its int32
bias) followed by ops that commute with quantization (ReLU and other max/min
with a constant, max pooling in any of its forms, reshapes, transposes,
gathers, selections), the next quantizer's ``(scale, zero point)`` moves up
to the op's output (``Q(relu(maxpool(y))) = relu(maxpool(Q(y)))`` on one
grid), and every op in between gets the same quantize/dequantize pair, so
onnxruntime runs it on int8 where it has the kernel (transposes, reshapes,
max pooling) and folds a ReLU into the quantizer. The graph computes what
hamjax's quantized JAX model computes, up to float rounding of the folded
scales and the int32 bias. The op rewrites that help the same fusions are in
:mod:`hamjax.export.rewrites`.
"""

from __future__ import annotations

import numpy as np

from hamjax.export.nodes import GraphIndex, attribute

# Ops whose output, on a grid of one (scale, zero point), stays on it and that commute with
# quantizing onto that grid: monotone non-decreasing maps applied elementwise, selections and layout.
COMMUTING = frozenset(
    {
        "Relu",
        "Max",
        "Min",
        "Clip",
        "ReduceMax",
        "ReduceMin",
        "MaxPool",
        "Transpose",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Flatten",
        "Identity",
        "Gather",
        "Slice",
        "Expand",
        "Concat",
        "Where",
    }
)


def _data_inputs(node) -> list[str]:
    """The inputs whose values an op passes on (the others: shapes, indices, a condition)."""
    if node.op_type in ("Max", "Min", "Concat", "Clip"):
        return [i for i in node.input if i]
    return list(node.input[1:3]) if node.op_type == "Where" else list(node.input[:1])


_AFFINE = frozenset({"Add", "Sub", "Mul", "Div"})
_FOLDABLE = {"Conv": 1, "Gemm": -1}  # op -> its output's channel axis
MIN_INTEGER_CONV_CHANNELS = 4
"""A convolution with fewer input channels takes its weight as float grid values (the same numbers), so
onnxruntime runs its float kernel: its int8 convolution (im2col and an int8 GEMM of depth kernel area x
channels) took 2.6x the time of the float NCHWc kernel on the reference CNN's 1-channel 28x28 input here.
Its output is still quantized, so what follows runs on int8."""


def _channel_vector(value: np.ndarray, rank: int, axis: int, channels: int) -> np.ndarray | None:
    """``value`` as one number per channel when it broadcasts along ``axis`` of a rank-``rank`` tensor only."""
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for k, d in enumerate(shape) if k != axis % rank) or shape[axis % rank] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,))


def _affine_chain(gr: GraphIndex, node, channels: int, rank: int):
    """The transposes and per-channel affine ops after ``node``: ``(nodes, a, b, end value)`` with ``y = a z + b``."""
    axis = _FOLDABLE[node.op_type] % rank
    value, chain = node.output[0], []
    a, b = np.ones(channels), np.zeros(channels)
    while True:
        users = [u for u in gr.consumers.get(value, []) if u.op_type != "Shape"]
        if len(users) != 1 or value in gr.outputs:
            break
        user = users[0]
        if user.op_type == "Transpose":
            axis = list(next(x.ints for x in user.attribute if x.name == "perm")).index(axis)
        elif user.op_type == "Reshape":
            # a reshape keeps the channels where they are last before and after (a 2-D Gemm back to 3-D)
            shape = gr.shapes.get(user.output[0])
            if axis != rank - 1 or not shape or shape[-1] != channels:
                break
            rank, axis = len(shape), len(shape) - 1
        elif user.op_type in _AFFINE and len(user.input) == 2:
            first = user.input[0] == value
            k = gr.constant(user.input[1] if first else user.input[0])
            k = None if k is None else _channel_vector(k, rank, axis, channels)
            if k is None or (user.op_type == "Div" and (not first or np.any(k == 0))):
                break
            if user.op_type == "Add":
                b = b + k
            elif user.op_type == "Sub":
                a, b = (a, b - k) if first else (-a, k - b)
            elif user.op_type == "Mul":
                a, b = a * k, b * k
            else:
                a, b = a / k, b / k
        elif user.op_type != "Identity":
            break
        chain.append(user)
        value = user.output[0]
    return chain, a, b, value


def _commuting_region(gr: GraphIndex, start: str):
    """The ops from ``start`` to the quantizers it reaches, when all commute with quantization; else ``None``.

    Returns:
      ``(region nodes in graph order, the quantizers)`` or ``None``.
    """
    region, quantizers, values, frontier, seen = [], [], {start}, [start], set()
    while frontier:
        value = frontier.pop()
        if value in gr.outputs:
            return None
        for user in gr.consumers.get(value, []):
            if user.op_type == "Shape" or id(user) in seen:
                continue
            seen.add(id(user))
            if user.op_type == "QuantizeLinear" and user.input[0] == value:
                quantizers.append(user)
                continue
            if user.op_type not in COMMUTING:
                return None
            if value not in _data_inputs(user):
                return None
            region.append(user)
            values.update(user.output[:1])
            frontier.append(user.output[0])
    for node in region:
        if any(i not in values and gr.constant(i) is None for i in _data_inputs(node)):
            return None
    params = {tuple(tuple(np.asarray(gr.constant(i)).reshape(-1).tolist()) for i in q.input[1:3]) for q in quantizers}
    zero_types = {gr.inits[q.input[2]].data_type if q.input[2] in gr.inits else None for q in quantizers}
    if not quantizers or len(params) != 1 or len(zero_types) != 1 or None in zero_types:
        return None
    if any(len(p) != 1 for p in next(iter(params))) or any(len(q.input) < 3 for q in quantizers):
        return None
    order = {id(n): k for k, n in enumerate(gr.g.node)}
    return sorted(region, key=lambda n: order[id(n)]), quantizers


def _bias(gr: GraphIndex, node, channels: int) -> np.ndarray | None:
    """The float bias of a Conv or Gemm (zeros without one), read through its int32 DequantizeLinear."""
    if len(node.input) < 3 or not node.input[2]:
        return np.zeros(channels)
    dq = gr.producer.get(node.input[2])
    if dq is not None and dq.op_type == "DequantizeLinear" and all(i in gr.inits for i in dq.input):
        codes, scale = gr.constant(dq.input[0]), gr.constant(dq.input[1])
        zero = gr.constant(dq.input[2]) if len(dq.input) > 2 else np.zeros(1)
        value = (codes.astype(np.float64) - zero.astype(np.float64)) * scale.astype(np.float64)
    else:
        value = gr.constant(node.input[2])
    if value is None or value.size not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float64), (channels,))


def _plan(gr: GraphIndex, node) -> dict | None:
    """How to fold and quantize ``node``'s output (see the module docstring), or ``None`` where it cannot."""
    if node.op_type not in _FOLDABLE or len(node.input) < 2 or node.output[0] in gr.outputs:
        return None
    if node.op_type == "Gemm" and (attribute(node, "transA", 0) or _scaling(node) != 1.0):
        return None
    s_x = gr.activation_scale(node.input[0])
    dq, perm = gr.weight_dq(node.input[1])
    if s_x is None or dq is None:
        return None
    codes = gr.constant(dq.input[0])
    scale = gr.constant(dq.input[1]).astype(np.float64).reshape(-1)
    zero = gr.constant(dq.input[2]) if len(dq.input) > 2 else np.zeros(1, np.int8)
    if codes.dtype != np.int8 or np.any(zero != 0):
        return None
    w_axis = 0 if node.op_type == "Conv" else (0 if attribute(node, "transB", 0) else 1)
    axis = perm[w_axis] if perm else w_axis
    channels = codes.shape[axis]
    if scale.size not in (1, channels) or (scale.size > 1 and attribute(dq, "axis", 1) % codes.ndim != axis):
        return None
    bias = _bias(gr, node, channels)
    rank = codes.ndim if node.op_type == "Conv" else 2
    chain, a, b, end = _affine_chain(gr, node, channels, rank)
    found = _commuting_region(gr, end)
    if found is None and any(u.op_type in _AFFINE for u in chain):
        found = ([], [None])  # no quantized output, but the affine ops still fold into the op
    if bias is None or found is None or np.any(a == 0):
        return None
    shape = [1] * codes.ndim
    shape[axis] = channels
    sign = np.where(a < 0, -1, 1).astype(np.int8).reshape(shape)
    if np.any((codes == -128) & (sign < 0)):
        return None
    new_scale = (np.broadcast_to(scale, (channels,)) * np.abs(a)).astype(np.float32)
    uniform = scale.size == 1 and np.all(new_scale == new_scale[0]) and np.all(sign > 0)
    bias_scale = (s_x * new_scale.astype(np.float64)).astype(np.float32)
    bias_codes = np.round((a * bias + b) / bias_scale.astype(np.float64))
    if np.any(np.abs(bias_codes) > 2**31 - 1):
        return None
    float_weight = None
    if node.op_type == "Conv" and codes.shape[perm[1] if perm else 1] < MIN_INTEGER_CONV_CHANNELS:
        # the grid values themselves, as DequantizeLinear computes them (float32 codes times scales)
        values = (codes * sign).astype(np.float32) * new_scale.reshape(shape)
        float_weight = np.transpose(values, perm) if perm else values
        found = ([], [None])
    return {
        "node": node,
        "dq": dq,
        "float_weight": float_weight,
        "axis": axis,
        "codes": (codes * sign).astype(np.int8),
        "scale": new_scale,
        "uniform": bool(uniform),  # per-tensor weights under a per-tensor (or no) affine stay per-tensor
        "bias": (bias_codes.astype(np.int32), bias_scale),
        "chain": chain,
        "region": found[0],
        "quantizer": found[1][0],
    }


def _scaling(node) -> float:
    """A Gemm's ``alpha`` times its ``beta`` (1 when both are defaults)."""
    values = {a.name: a.f for a in node.attribute if a.name in ("alpha", "beta")}
    return values.get("alpha", 1.0) * values.get("beta", 1.0)


def _apply(gr: GraphIndex, plan: dict) -> None:
    from onnx import helper

    node, dq, g = plan["node"], plan["dq"], gr.g
    channels = plan["scale"].size
    replaced = {dq.input[0]: plan["codes"]}
    if plan["uniform"]:
        replaced[dq.input[1]] = plan["scale"][0]
    else:
        replaced[dq.input[1]] = plan["scale"]
        zero_name = dq.input[2] if len(dq.input) > 2 else f"{dq.input[0]}_zero"
        replaced[zero_name] = np.zeros(channels, np.int8)
        if len(dq.input) < 3:
            dq.input.append(zero_name)
        for a in [a for a in dq.attribute if a.name == "axis"]:
            dq.attribute.remove(a)
        dq.attribute.append(helper.make_attribute("axis", plan["axis"]))
    stem = dq.input[0][:-2] if dq.input[0].endswith("_q") else dq.input[0]
    # a name of its own: a Gemm's bias may already be a DequantizeLinear named after the weight
    stem = stem.replace("hq_w", "hq_ob", 1) if stem.startswith("hq_w") else f"{stem}_out_bias"
    codes, scale = plan["bias"]
    replaced.update({f"{stem}_q": codes, f"{stem}_s": scale, f"{stem}_z": np.zeros(channels, np.int32)})
    bias_dq = helper.make_node("DequantizeLinear", [f"{stem}_q", f"{stem}_s", f"{stem}_z"], [stem], axis=0)
    if plan["float_weight"] is not None:  # and a float bias (DequantizeLinear's numbers): a constant, as NCHWc needs
        float_name = (dq.input[0][:-2] if dq.input[0].endswith("_q") else dq.input[0]) + "_f"
        replaced[float_name] = plan["float_weight"]
        replaced[f"{stem}_f"] = codes.astype(np.float32) * scale
        node.input[1] = float_name
    kept = [t for t in g.initializer if t.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(kept + [gr.numpy_helper.from_array(np.asarray(v), k) for k, v in replaced.items()])
    while len(node.input) < 3:
        node.input.append("")
    node.input[2] = stem if plan["float_weight"] is None else f"{stem}_f"
    # the affine ops go: their users read their data input instead
    renames, prev = {}, node.output[0]
    for user in plan["chain"]:
        if user.op_type in _AFFINE:
            renames[user.output[0]] = renames.get(prev, prev)
        prev = user.output[0]
    removed = {id(u) for u in plan["chain"] if u.op_type in _AFFINE}
    q = plan["quantizer"]
    quantized = [node] + [u for u in plan["chain"] if id(u) not in removed] + plan["region"] if q else []
    pairs = {}
    for producer in quantized:
        out = producer.output[0]
        users = [u for u in gr.consumers.get(out, []) if id(u) not in removed and u.op_type != "Shape"]
        if users and all(u.op_type == "QuantizeLinear" for u in users):
            continue
        producer.output[0] = f"{out}_hq_f"
        pairs[id(producer)] = [
            helper.make_node("QuantizeLinear", [f"{out}_hq_f", q.input[1], q.input[2]], [f"{out}_hq_q"]),
            helper.make_node("DequantizeLinear", [f"{out}_hq_q", q.input[1], q.input[2]], [out]),
        ]
    nodes = []
    for n in g.node:
        if id(n) in removed:
            continue
        if n is node:
            nodes.append(bias_dq)
        for k, name in enumerate(n.input):
            if name in renames:
                n.input[k] = renames[name]
        if n.op_type == "Max" and id(n) in {id(r) for r in plan["region"]}:
            _to_relu(gr, n)
        nodes.append(n)
        nodes.extend(pairs.get(id(n), []))
    del g.node[:]
    g.node.extend(nodes)


def _to_relu(gr: GraphIndex, node) -> None:
    """``Max(x, 0)`` as ``Relu(x)``, which onnxruntime folds into the quantizer after it."""
    if len(node.input) != 2:
        return
    for k in (0, 1):
        other = gr.constant(node.input[1 - k])
        if other is not None and other.size == 1 and float(other.reshape(())) == 0.0:
            node.op_type = "Relu"
            data = node.input[k]
            del node.input[:]
            node.input.append(data)
            return


def quantize_outputs(model) -> int:
    """Give each ``Conv`` and ``Gemm`` with int8 inputs the output quantization onnxruntime needs (in place).

    Where the op's output reaches the next ``QuantizeLinear`` through
    per-channel affine ops and ops that commute with quantization only (see
    the module docstring), the affine ops are folded into the op's weight
    scales and int32 bias, and the op's output and every op on the way is
    quantized on the next quantizer's grid. Where the output cannot be
    quantized exactly (a ``tanh`` follows, a residual sum), per-channel affine
    ops right after the op (a bias, a batch norm) still fold into it, and its
    output stays float; elsewhere nothing changes.

    Args:
      model: an int8 QDQ ``onnx.ModelProto`` (per-tensor activation quantizers,
        symmetric int8 weights).

    Returns:
      How many ops gained an output quantizer.

    Examples:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from hamjax import quant
      >>> from hamjax.export import qdq
      >>> f = lambda p, x: jax.nn.relu(x @ p["w1"]) @ p["w2"]
      >>> x = np.random.default_rng(0).uniform(size=(16, 4)).astype(np.float32)
      >>> qapply, qparams = quant.quantize_model(f, {"w1": jnp.ones((4, 8)), "w2": jnp.ones((8, 2))}, calibration=[x])
      >>> quantize_outputs(qdq.quantized_model(qapply, qparams, x, integer_outputs=False))  # the first Gemm
      1
    """
    done = 0
    index = 0
    while True:
        gr = GraphIndex(model)
        candidates = [n for n in gr.g.node if n.op_type in _FOLDABLE][index:]
        if not candidates:
            return done
        plan = _plan(gr, candidates[0])
        if plan is not None:
            _apply(gr, plan)
            done += plan["quantizer"] is not None
        index += 1

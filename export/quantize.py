"""int8 weights for the traced fp32 graph.

Each MatMul with a constant weight gets the int8 product its role in the layer tolerates
(measured: docs/decisions/2026-12-01-faster-int8-query.md).  onnxruntime 1.31's 8-bit
``MatMulNBits`` (one weight scale per block of 32 input values of each output column,
activations quantised per token row and block of 32, int8 products) keeps the vectors closest to
PyTorch, but its kernel runs a token row at a time: for a 9-token query a 384x1536 product takes
~90 us, ``DynamicQuantizeMatMul`` (one uint8 activation scale per run, one int8 weight scale per
output column, onnxruntime's packed int8 GEMM) ~23 us.  The per-run activation scale alone lost
quality (mean cosine 0.9957 to PyTorch, shipped until 2026-12-01) because a few input channels
carry values ten times the others; two exact fp32 rewrites take them out of that scale:

* ``attention_qkv`` (the merged query/key/value product, input: a LayerNorm output): smoothed,
  x @ W = (x / s) @ (diag(s) W) with s per input channel from the calibration maxima (alpha 1:
  every channel of x / s peaks near 1), then ``DynamicQuantizeMatMul``;
* ``attention_output``: ``DynamicQuantizeMatMul`` as is;
* ``ffn_up`` (input: a LayerNorm output with a few outlier channels): the ``outlier_channels``
  input channels with the largest calibration maxima are multiplied in fp32 (Gather + a small
  MatMul), the others (those channels zeroed) through ``DynamicQuantizeMatMul``;
* ``ffn_down`` (input: GELU outputs, the most sensitive product) and every MatMul outside these
  roles: ``MatMulNBits`` as before.

Roles are read off the node names the exporter gives BERT-family layers (``/attention/self/``,
``/attention/output/``, ``/intermediate/``); without calibration feeds, or for names that match no
role, every product is ``MatMulNBits``.  Calibration: the fp32 graph runs one text at a time over
titles and descriptions of ``data/demo-games.jsonl`` (none of the verification texts), and only
each input channel's largest magnitude is kept.  The table of token embeddings (indexed by
``input_ids``) is stored int8 with one scale per token row; the position and token-type tables
(0.8 MB) stay fp32.

Nothing here is read back at run time: the manifest records ``INT8_SETTINGS`` and the encoder
just runs the graph.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import MappingProxyType

import numpy as np

INT8_SETTINGS = MappingProxyType(
    {
        "bits": 8,  # every int8 product: 8-bit symmetric weights
        "symmetric": True,
        "attention_qkv": "DynamicQuantizeMatMul, input channels smoothed",
        "attention_output": "DynamicQuantizeMatMul",
        "ffn_up": "DynamicQuantizeMatMul, outlier input channels fp32",
        "ffn_down": "MatMulNBits",  # and every product of no known role
        "smoothing_alpha": 1.0,
        "outlier_channels": 64,
        "block_size": 32,  # MatMulNBits: one weight scale per 32 input values of an output column
        "accuracy_level": 4,  # MatMulNBits: int8 products; activations per token row and block of 32
        "token_embeddings": "int8 per row",  # the table input_ids indexes; the other tables stay fp32
        "calibration": "data/demo-games.jsonl",
    }
)
TOKEN_INPUT = "input_ids"
CALIBRATION_FILE = Path(__file__).resolve().parents[1] / "data" / "demo-games.jsonl"
ROLES = (
    ("attention_qkv", "/attention/self/"),
    ("attention_output", "/attention/output/"),
    ("ffn_up", "/intermediate/"),
)
SIDE = "/outlier_channels"  # name part of the fp32 side products (they stay MatMul on purpose)


def role_of(name: str) -> str:
    """The layer role of a MatMul by its exported name ("ffn_down" for anything else)."""
    return next((role for role, part in ROLES if part in name), "ffn_down")


def calibration_texts(path: Path = CALIBRATION_FILE) -> list[str]:
    """Every third title and every sixth description of the demo corpus (555 texts, short and long)."""
    docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [d["title"] for d in docs[::3]] + [d["text"] for d in docs[1::6]]


def calibration_feeds(tokenizer, max_len: int, input_names: list[str], texts: list[str] | None = None) -> list[dict]:
    """One unpadded run per text (the encoder's way), as onnxruntime feeds."""
    feeds = []
    for text in calibration_texts() if texts is None else texts:
        ids = np.array([tokenizer(text, truncation=True, max_length=max_len)["input_ids"]], dtype=np.int64)
        values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        feeds.append({n: values[n] for n in input_names})
    return feeds


def constant_matmuls(model) -> list[str]:
    """Names (or output names) of the fp32 MatMuls whose second input is a constant 2-D weight."""
    from onnx import TensorProto

    weights = {t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    return [n.name or n.output[0] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights]


def int8_token_embeddings(model) -> list[str]:
    """Store each fp32 table that ``input_ids`` indexes as int8 rows with one fp32 scale per row:
    Gather(table, ids) becomes Gather(int8, ids) -> Cast -> Mul(Gather(scales, ids)).  In place;
    returns the tables' names."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    done = []
    for node in list(graph.node):
        table = consts.get(node.input[0]) if node.op_type == "Gather" else None
        if table is None or node.input[1] != TOKEN_INPUT or table.data_type != TensorProto.FLOAT:
            continue
        if len(table.dims) != 2 or any(a.name == "axis" and a.i != 0 for a in node.attribute):
            continue
        rows = numpy_helper.to_array(table)
        scales = np.abs(rows).max(axis=1, keepdims=True) / 127.0
        scales[scales == 0] = 1.0
        values = np.clip(np.rint(rows / scales), -127, 127).astype(np.int8)
        p = f"{table.name}/int8_rows"
        graph.initializer.remove(table)
        graph.initializer.extend(
            [
                numpy_helper.from_array(values, f"{p}/values"),
                numpy_helper.from_array(scales.astype(np.float32), f"{p}/scales"),
            ]
        )
        at = list(graph.node).index(node)
        graph.node.remove(node)
        ids = node.input[1]
        for offset, new in enumerate(
            [
                helper.make_node("Gather", [f"{p}/values", ids], [f"{p}/gathered"], name=f"{p}/Gather"),
                helper.make_node("Gather", [f"{p}/scales", ids], [f"{p}/row_scales"], name=f"{p}/GatherScales"),
                helper.make_node("Cast", [f"{p}/gathered"], [f"{p}/float"], to=TensorProto.FLOAT, name=f"{p}/Cast"),
                helper.make_node("Mul", [f"{p}/float", f"{p}/row_scales"], [node.output[0]], name=f"{p}/Mul"),
            ]
        ):
            graph.node.insert(at + offset, new)
        done.append(table.name)
    return done


def input_ranges(model, feeds: list[dict], names: list[str]) -> dict[str, np.ndarray]:
    """Largest magnitude of each channel (last axis) of the MatMul inputs ``names`` over every
    token of every run of ``feeds`` through the fp32 graph."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
    peaks: dict[str, np.ndarray] = {}
    for feed in feeds:
        for name, values in zip(names, session.run(names, feed), strict=True):
            peak = np.abs(values).reshape(-1, values.shape[-1]).max(axis=0)
            peaks[name] = np.maximum(peaks[name], peak) if name in peaks else peak
    return peaks


def _consumers(graph) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def smooth_inputs(model, node, peaks: np.ndarray, alpha: float) -> None:
    """x @ W -> (x * 1/s) @ (diag(s) W), s_j = peak_j^alpha / max|W_j,:|^(1-alpha) (geometric mean 1)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weight = next(t for t in graph.initializer if t.name == node.input[1])
    w = numpy_helper.to_array(weight)
    s = np.maximum(peaks, 1e-5) ** alpha / np.maximum(np.abs(w).max(axis=1), 1e-5) ** (1 - alpha)
    s = s / np.exp(np.mean(np.log(s)))
    weight.CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), weight.name))
    p = f"{node.name}/smooth"
    graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), f"{p}/inverse"))
    graph.node.insert(
        list(graph.node).index(node), helper.make_node("Mul", [node.input[0], f"{p}/inverse"], [f"{p}/x"], name=p)
    )
    node.input[0] = f"{p}/x"


def split_outlier_channels(model, node, peaks: np.ndarray, k: int) -> str:
    """x @ W -> (x * keep) @ W_kept + Gather(x, outliers) @ W[outliers] (fp32), the outliers being
    the ``k`` channels of x with the largest peaks; returns the side product's node name."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weight = next(t for t in graph.initializer if t.name == node.input[1])
    w = numpy_helper.to_array(weight)
    idx = np.sort(np.argsort(peaks, kind="stable")[-k:]).astype(np.int64)
    keep = np.ones(w.shape[0], dtype=np.float32)
    keep[idx] = 0.0
    p = f"{node.name}{SIDE}"
    weight.CopyFrom(numpy_helper.from_array((w * keep[:, None]).astype(np.float32), weight.name))
    graph.initializer.extend(
        [
            numpy_helper.from_array(idx, f"{p}/channels"),
            numpy_helper.from_array(w[idx].astype(np.float32), f"{p}/weight"),
            numpy_helper.from_array(keep, f"{p}/keep"),
        ]
    )
    users = _consumers(graph).get(node.output[0], [])
    last = users[0] if len(users) == 1 and users[0].op_type == "Add" else node  # the bias Add, if any
    final, x = last.output[0], node.input[0]
    last.output[0] = f"{p}/rest"
    graph.node.insert(
        list(graph.node).index(node), helper.make_node("Mul", [x, f"{p}/keep"], [f"{p}/x"], name=f"{p}/Mul")
    )
    node.input[0] = f"{p}/x"
    at = list(graph.node).index(last) + 1
    side = f"{p}/MatMul"
    for offset, new in enumerate(
        [
            helper.make_node("Gather", [x, f"{p}/channels"], [f"{p}/gathered"], axis=-1, name=f"{p}/Gather"),
            helper.make_node("MatMul", [f"{p}/gathered", f"{p}/weight"], [f"{p}/product"], name=side),
            helper.make_node("Add", [f"{p}/rest", f"{p}/product"], [final], name=f"{p}/Add"),
        ]
    ):
        graph.node.insert(at + offset, new)
    return side


def dynamic_quantize_matmul(model, node, bits: int = 8) -> None:
    """MatMul(x, W) [-> Add(bias)] as DynamicQuantizeMatMul: int8 weights with one scale per output
    column (symmetric), x quantised to uint8 with one scale per run, the bias folded in."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    w = numpy_helper.to_array(consts[node.input[1]])
    top = 2 ** (bits - 1) - 1
    scales = np.abs(w).max(axis=0) / top
    scales[scales == 0] = 1.0
    values = np.clip(np.rint(w / scales), -top, top).astype(np.int8)
    p = f"{node.name}/int8"
    graph.initializer.extend(
        [
            numpy_helper.from_array(values, f"{p}/weight"),
            numpy_helper.from_array(scales.astype(np.float32), f"{p}/scales"),
        ]
    )
    inputs, out = [node.input[0], f"{p}/weight", f"{p}/scales", ""], node.output[0]
    users = _consumers(graph).get(out, [])
    if len(users) == 1 and users[0].op_type == "Add":
        bias = next((i for i in users[0].input if i != out), None)
        if bias in consts and len(consts[bias].dims) == 1:
            inputs.append(bias)
            out = users[0].output[0]
            graph.node.remove(users[0])
    at = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(at, helper.make_node("DynamicQuantizeMatMul", inputs, [out], name=p, domain="com.microsoft"))
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def blockwise_matmuls(model, settings=INT8_SETTINGS, exclude=()):
    """Every MatMul with a constant weight, but those named in ``exclude``, as MatMulNBits."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=settings["bits"],
        block_size=settings["block_size"],
        is_symmetric=settings["symmetric"],
        accuracy_level=settings["accuracy_level"],
        op_types_to_quantize=("MatMul",),
        nodes_to_exclude=list(exclude),
    )
    quantizer.process()
    return quantizer.model.model


def quantize_int8(src: Path, dst: Path, settings=INT8_SETTINGS, calibration: list[dict] | None = None) -> dict:
    """Quantise the fp32 graph at ``src`` into ``dst``; returns the manifest's ``quantization``.
    ``calibration``: onnxruntime feeds (``calibration_feeds``); without them every product is
    MatMulNBits."""
    import onnx

    model = onnx.load(str(src))
    wanted = constant_matmuls(model)
    nodes = {n.name: n for n in model.graph.node}
    roles = {name: role_of(name) if calibration and name in nodes else "ffn_down" for name in wanted}
    fast = [name for name in wanted if settings[roles[name]] != "MatMulNBits"]
    inputs = list(dict.fromkeys(nodes[n].input[0] for n in fast))
    peaks = input_ranges(model, calibration, inputs) if fast and calibration else {}
    tables = int8_token_embeddings(model)
    sides = []
    for name in fast:
        node, role = nodes[name], roles[name]
        if role == "attention_qkv":
            smooth_inputs(model, node, peaks[node.input[0]], settings["smoothing_alpha"])
        elif role == "ffn_up":
            sides.append(split_outlier_channels(model, node, peaks[node.input[0]], settings["outlier_channels"]))
        dynamic_quantize_matmul(model, node, settings["bits"])
    model = blockwise_matmuls(model, settings, exclude=sides)
    left = [n for n in constant_matmuls(model) if n not in sides]
    kernels = Counter(n.op_type for n in model.graph.node if n.op_type in ("MatMulNBits", "DynamicQuantizeMatMul"))
    if left or sum(kernels.values()) != len(wanted):
        raise RuntimeError(f"int8 quantisation made {dict(kernels)} of {len(wanted)} products, left fp32: {left}")
    onnx.save(model, str(dst))
    return {
        **settings,
        "method": "onnxruntime DynamicQuantizeMatMul and matmul_nbits_quantizer by role",
        "weight_type": "int8",
        "activation_type": "DynamicQuantizeMatMul: uint8, one scale per run; MatMulNBits: int8 per token row and block",
        "matmuls_quantized": len(wanted),
        "matmuls_by_kernel": dict(sorted(kernels.items())),
        "outlier_side_products": len(sides),
        "calibration_texts": len(calibration or []),
        "token_embedding_tables": tables,
    }

"""export/graph.py on small hand-built graphs shaped like the exporter's: two attention layers whose
head split/merge reshapes take their target shape from Shape/Gather/Concat, and an additive mask
built from attention_mask by a Range/Expand/Where chain; and a block of query/key/value-like
projections that share their input.  (The real MiniLM export is covered in
tests/export/test_export.py: its manifest lists both rewrites and its vectors still pass the gate.)"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from export import graph as export_graph
from export import quantize

VOCAB, HIDDEN, HEADS = 20001, 8, 2
NAMES = ["input_ids", "attention_mask"]


def _graph(masked_value: float = float(np.finfo(np.float32).min)) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), "table"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.array([HEADS, HIDDEN // HEADS], np.int64), "heads"),
        numpy_helper.from_array(np.array([HIDDEN], np.int64), "hidden"),
        numpy_helper.from_array(np.array(0.0, np.float32), "keep"),
        numpy_helper.from_array(np.array(masked_value, np.float32), "drop"),
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes12"),
        numpy_helper.from_array(np.array([1], np.int64), "one1"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["x0"]),
        # dims of x0 traced as the legacy exporter does
        helper.make_node("Shape", ["x0"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"]),
        helper.make_node("Gather", ["shape", "one"], ["seq"]),
        helper.make_node("Unsqueeze", ["batch", "axis0"], ["batch1"]),
        helper.make_node("Unsqueeze", ["seq", "axis0"], ["seq1"]),
        helper.make_node("Concat", ["batch1", "seq1", "heads"], ["split_shape"], axis=0),
        helper.make_node("Concat", ["batch1", "seq1", "hidden"], ["merge_shape"], axis=0),
        # mask chain: [b, s] -> [b, 1, s, s] additive, through Range and Expand like transformers'
        helper.make_node("Cast", ["attention_mask"], ["mask_bool"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["mask_bool", "axes12"], ["mask4"]),
        helper.make_node("Range", ["zero", "seq", "one"], ["positions"]),
        helper.make_node("Concat", ["batch1", "one1", "seq1", "seq1"], ["mask_shape"], axis=0),
        helper.make_node("Expand", ["mask4", "mask_shape"], ["mask_full"]),
        helper.make_node("Where", ["mask_full", "keep", "drop"], ["additive"]),
    ]
    x = "x0"
    for layer in range(2):
        p = f"l{layer}_"
        nodes += [
            helper.make_node("Reshape", [x, "split_shape"], [p + "heads"]),
            helper.make_node("Transpose", [p + "heads"], [p + "q"], perm=[0, 2, 1, 3]),
            helper.make_node("Transpose", [p + "heads"], [p + "kt"], perm=[0, 2, 3, 1]),
            helper.make_node("MatMul", [p + "q", p + "kt"], [p + "scores"]),
            helper.make_node("Add", [p + "scores", "additive"], [p + "masked"]),
            helper.make_node("Softmax", [p + "masked"], [p + "probs"], axis=-1),
            helper.make_node("MatMul", [p + "probs", p + "q"], [p + "ctx"]),
            helper.make_node("Transpose", [p + "ctx"], [p + "ctx_t"], perm=[0, 2, 1, 3]),
            helper.make_node("Reshape", [p + "ctx_t", "merge_shape"], [p + "out"]),
        ]
        x = p + "out"
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids, "attention_mask": mask})[0]


def _inputs(batch: int, length: int):
    rng = np.random.default_rng(batch * 100 + length)
    ids = rng.integers(1, VOCAB, (batch, length)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[-1, length // 2 :] = 0
    return ids, mask


def _ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_both_rewrites_keep_the_outputs_and_drop_the_bookkeeping(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_graph(), str(path))
    before = {shape: _run(path, *_inputs(*shape)) for shape in [(1, 5), (4, 9), (2, 30)]}
    messages = []
    assert export_graph.simplify(path, NAMES, log=messages.append) == ["constant_reshapes", "plain_mask"]
    ops = _ops(path)
    for gone in ("Shape", "Concat", "Range", "Expand"):
        assert gone not in ops, (gone, ops)
    for shape, expected in before.items():  # also sizes the probes never saw
        np.testing.assert_array_equal(_run(path, *_inputs(*shape)), expected)
    reshape_targets = [
        numpy_helper.to_array(t).tolist()
        for t in onnx.load(str(path)).graph.initializer
        if t.name.endswith("/constant_shape")
    ]
    assert sorted(reshape_targets) == sorted([[0, 0, HEADS, HIDDEN // HEADS], [0, 0, HIDDEN]] * 2)
    assert any("outputs unchanged" in m for m in messages)


def test_a_mask_with_another_value_is_left_as_traced(tmp_path):
    """-10000 instead of float32 min: the plain mask would move the outputs, so it is skipped."""
    path = tmp_path / "model.onnx"
    onnx.save(_graph(masked_value=-3.0), str(path))
    expected = _run(path, *_inputs(3, 8))
    messages = []
    assert export_graph.simplify(path, NAMES, log=messages.append) == ["constant_reshapes"]
    assert any("plain_mask skipped: token states moved" in m for m in messages)
    assert "Where" in _ops(path) and "Expand" in _ops(path)
    np.testing.assert_array_equal(_run(path, *_inputs(3, 8)), expected)


def test_a_graph_without_attention_is_left_alone(tmp_path):
    table = numpy_helper.from_array(np.ones((VOCAB, HIDDEN), np.float32), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "input_ids"], ["last_hidden_state"])],
        "plain",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "s"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["b", "s"]),
        ],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    data = path.read_bytes()
    messages = []
    assert export_graph.simplify(path, NAMES, log=messages.append) == []
    assert path.read_bytes() == data  # not rewritten at all
    assert messages == [
        "  graph rewrite constant_reshapes: nothing to rewrite",
        "  graph rewrite plain_mask: nothing to rewrite",
        "  graph rewrite merged_projections: nothing to rewrite",
    ]


def test_unrecognised_mask_path_is_skipped_not_fatal(tmp_path):
    model = _graph()
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.input[0] = softmax.input[0].replace("masked", "scores")  # the first layer has no mask Add
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    messages = []
    assert export_graph.simplify(path, NAMES, log=messages.append) == ["constant_reshapes"]
    assert "  graph rewrite plain_mask: nothing to rewrite" in messages


def _projections(widths=(HIDDEN, HIDDEN, HIDDEN)) -> onnx.ModelProto:
    """x -> three MatMul + bias Add (like a layer's query, key, value) -> joined and projected by a
    MatMul on another input, which must be left alone."""
    rng = np.random.default_rng(3)
    inits, nodes, outs = [], [], []
    for i, width in enumerate(widths):
        inits += [
            numpy_helper.from_array(rng.standard_normal((HIDDEN, width)).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", ["x", f"w{i}"], [f"p{i}"], name=f"proj{i}"),
            helper.make_node("Add", [f"p{i}", f"b{i}"], [f"y{i}"], name=f"bias{i}"),
        ]
        outs.append(f"y{i}")
    inits.append(numpy_helper.from_array(rng.standard_normal((sum(widths), HIDDEN)).astype(np.float32), "w_other"))
    nodes += [
        helper.make_node("Concat", outs, ["joined"], axis=-1),
        helper.make_node("MatMul", ["joined", "w_other"], ["last_hidden_state"], name="other"),
    ]
    graph = helper.make_graph(
        nodes,
        "projections",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run_x(model, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_projections_sharing_an_input_become_one_product_and_a_split():
    model = _projections()
    x = np.random.default_rng(0).standard_normal((2, 5, HIDDEN)).astype(np.float32)
    expected = _run_x(model, x)
    assert export_graph.merged_projections(model) == 1
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("MatMul") == 2 and ops.count("Split") == 1 and ops.count("Add") == 1, ops
    weight = next(t for t in model.graph.initializer if t.name.endswith("/merged/weight"))
    assert list(weight.dims) == [HIDDEN, 3 * HIDDEN]
    np.testing.assert_allclose(_run_x(model, x), expected, rtol=1e-6, atol=1e-5)


def test_projections_of_different_widths_are_left_alone():
    model = _projections(widths=(HIDDEN, HIDDEN // 2, HIDDEN))
    assert export_graph.merged_projections(model) == 0
    assert [n.op_type for n in model.graph.node].count("MatMul") == 4


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def test_int8_makes_every_constant_matmul_blockwise_and_keeps_the_outputs_close(tmp_path):
    """export.quantize.quantize_int8 on a token table and three products: the two with constant
    weights become MatMulNBits (8 bits, blocks of 32, int8 products), the product of two activations
    stays fp32, the token table is stored int8 per row, and the output stays close to the fp32 graph's."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(size=(500, 64)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.normal(size=(64, 96)).astype(np.float32) / 8, "w1"),
        numpy_helper.from_array(rng.normal(size=(96, 32)).astype(np.float32) / 10, "w2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "input_ids"], ["x"], name="embed"),
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="first"),
            helper.make_node("MatMul", ["h", "w2"], ["y"], name="second"),
            helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1], name="transpose"),
            helper.make_node("MatMul", ["y", "yt"], ["scores"], name="activations"),
        ],
        "products",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [None, None, None])],
        inits,
    )
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(src))
    ids = rng.integers(0, 500, size=(2, 7), dtype=np.int64)
    before = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]

    record = quantize.quantize_int8(src, dst)

    model = onnx.load(str(dst))
    assert quantize.constant_matmuls(model) == []  # no fp32 MatMul with constant weights left
    blockwise = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(blockwise) == 2 == record["matmuls_quantized"]
    for node in blockwise:
        attrs = _attrs(node)
        assert (attrs["bits"], attrs["block_size"], attrs["accuracy_level"]) == (8, 32, 4), attrs
    assert [n.name for n in model.graph.node if n.op_type == "MatMul"] == ["activations"]
    consts = {t.name: t for t in model.graph.initializer}
    assert "table" not in consts and record["token_embedding_tables"] == ["table"]
    assert any(t.data_type == TensorProto.INT8 and list(t.dims) == [500, 64] for t in consts.values())
    assert {k: record[k] for k in quantize.INT8_SETTINGS} == dict(quantize.INT8_SETTINGS)
    after = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    assert after.shape == before.shape
    assert np.abs(after - before).max() < 0.02 * np.abs(before).max()  # 8-bit blocks: close, not equal
    assert not np.array_equal(after, before)


def test_int8_settings_are_frozen():
    with pytest.raises(TypeError):
        quantize.INT8_SETTINGS["bits"] = 4  # type: ignore[index]
    assert quantize.INT8_SETTINGS["bits"] == 8


def _layer_graph() -> tuple[onnx.ModelProto, dict]:
    """A token table and one layer's four products, named as the exporter names a BERT layer's,
    with a few input channels ten times the others (as MiniLM's LayerNorm outputs have)."""
    rng = np.random.default_rng(5)
    table = rng.normal(size=(300, 64)).astype(np.float32)
    table[:, [3, 40]] *= 10  # outlier channels
    p = "/inner/encoder/layer.0"
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(rng.normal(size=(64, 96)).astype(np.float32) / 8, "wqkv"),
        numpy_helper.from_array(rng.normal(size=96).astype(np.float32), "bqkv"),
        numpy_helper.from_array(rng.normal(size=(96, 64)).astype(np.float32) / 10, "wo"),
        numpy_helper.from_array(rng.normal(size=(64, 128)).astype(np.float32) / 8, "wup"),
        numpy_helper.from_array(rng.normal(size=128).astype(np.float32), "bup"),
        numpy_helper.from_array(rng.normal(size=(128, 64)).astype(np.float32) / 12, "wdown"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["x"], name="embed"),
        helper.make_node("MatMul", ["x", "wqkv"], ["qkv0"], name=f"{p}/attention/self/query/MatMul/merged/MatMul"),
        helper.make_node("Add", ["qkv0", "bqkv"], ["qkv"], name=f"{p}/attention/self/query/MatMul/merged/Add"),
        helper.make_node("MatMul", ["qkv", "wo"], ["att"], name=f"{p}/attention/output/dense/MatMul"),
        helper.make_node("Add", ["att", "x"], ["h"], name="residual"),
        helper.make_node("MatMul", ["h", "wup"], ["up0"], name=f"{p}/intermediate/dense/MatMul"),
        helper.make_node("Add", ["bup", "up0"], ["up"], name=f"{p}/intermediate/dense/Add"),
        helper.make_node("Relu", ["up"], ["act"], name="act"),
        helper.make_node("MatMul", ["act", "wdown"], ["y"], name=f"{p}/output/dense/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "layer",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None, 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, {"input_ids": rng.integers(0, 300, size=(1, 9), dtype=np.int64)}


def _infer(model, feed) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


def test_role_of_reads_the_bert_module_path():
    p = "/inner/encoder/layer.3"
    assert quantize.role_of(f"{p}/attention/self/query/MatMul/merged/MatMul") == "attention_qkv"
    assert quantize.role_of(f"{p}/attention/output/dense/MatMul") == "attention_output"
    assert quantize.role_of(f"{p}/intermediate/dense/MatMul") == "ffn_up"
    assert quantize.role_of(f"{p}/output/dense/MatMul") == "ffn_down"
    assert quantize.role_of("first") == "ffn_down"  # unknown: the blockwise default


def test_smoothing_and_outlier_split_are_exact_in_fp32():
    """The two rewrites that run before DynamicQuantizeMatMul only move numbers between factors."""
    model, feed = _layer_graph()
    before = _infer(model, feed)
    nodes = {n.name: n for n in model.graph.node}
    qkv, up = (next(n for name, n in nodes.items() if part in name) for part in ("/self/", "/intermediate/dense/Mat"))
    peaks = quantize.input_ranges(model, [feed], [qkv.input[0], up.input[0]])
    assert np.argsort(peaks[qkv.input[0]])[-2:].tolist() in ([3, 40], [40, 3])
    quantize.smooth_inputs(model, qkv, peaks[qkv.input[0]], 1.0)
    side = quantize.split_outlier_channels(model, up, peaks[up.input[0]], 4)
    onnx.checker.check_model(model)
    assert quantize.SIDE in side and side in [n.name for n in model.graph.node]
    assert np.abs(_infer(model, feed) - before).max() < 1e-4 * np.abs(before).max()


def test_int8_with_calibration_quantises_by_role(tmp_path):
    """With calibration feeds: query/key/value, attention output and FFN up as DynamicQuantizeMatMul
    (the up-projection's outlier channels in an fp32 side product), FFN down as MatMulNBits; the
    output stays close to the fp32 graph's."""
    model, feed = _layer_graph()
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(src))
    before = _infer(model, feed)
    settings = {**quantize.INT8_SETTINGS, "outlier_channels": 4}
    rng = np.random.default_rng(6)
    calibration = [{"input_ids": rng.integers(0, 300, size=(1, n), dtype=np.int64)} for n in (3, 8, 20)]

    record = quantize.quantize_int8(src, dst, settings, calibration)

    out = onnx.load(str(dst))
    kinds = {n.name: n.op_type for n in out.graph.node}
    assert record["matmuls_by_kernel"] == {"DynamicQuantizeMatMul": 3, "MatMulNBits": 1}
    assert record["matmuls_quantized"] == 4 and record["outlier_side_products"] == 1
    assert record["calibration_texts"] == 3 and record["outlier_channels"] == 4
    assert [n for n, k in kinds.items() if k == "MatMulNBits"] == ["/inner/encoder/layer.0/output/dense/MatMul_Q8"]
    sides = [n for n, k in kinds.items() if k == "MatMul"]
    assert len(sides) == 1 and quantize.SIDE in sides[0]
    assert "Add" not in [kinds[n] for n in kinds if "/self/" in n]  # the bias went into the product
    after = _infer(out, feed)
    assert np.abs(after - before).max() < 0.03 * np.abs(before).max()
    assert not np.array_equal(after, before)


def test_int8_without_calibration_is_all_blockwise(tmp_path):
    model, feed = _layer_graph()
    src, dst = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(src))
    record = quantize.quantize_int8(src, dst)
    assert record["matmuls_by_kernel"] == {"MatMulNBits": 4} and record["calibration_texts"] == 0
    assert quantize.constant_matmuls(onnx.load(str(dst))) == []

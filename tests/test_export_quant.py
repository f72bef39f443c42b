"""export_quant.py on a small hand-built feed-forward tail shaped like BERT's: an activation (Relu) ->
down-projection (wider in than out), whose input has two outlier channels on every text.
(The real MiniLM export is covered in test_export.py: its manifest lists the split channels and its
vectors pass the gate.)"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

import export_quant

HIDDEN, WIDE = 16, 64
OUTLIERS = [5, 40]


def _block() -> onnx.ModelProto:
    down = np.random.default_rng(1).standard_normal((WIDE, HIDDEN)).astype(np.float32) * 0.3
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["act"], name="act"),
         helper.make_node("MatMul", ["act", "down"], ["y"], name="down")],
        "ffn_tail",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "s", WIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        [numpy_helper.from_array(down, "down")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _feeds(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        x = rng.standard_normal((1, int(rng.integers(3, 12)), WIDE)).astype(np.float32)
        x[..., OUTLIERS] = np.abs(x[..., OUTLIERS]) * 25  # the same two channels far out, every time
        feeds.append({"x": x})
    return feeds


def _run(model_or_path, feeds: list[dict]) -> list[np.ndarray]:
    source = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else str(model_or_path)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return [session.run(None, f)[0] for f in feeds]


def test_only_the_down_projection_is_found():
    assert [n.name for n in export_quant.down_projections(_block())] == ["down"]


def test_outlier_rule_takes_the_peaks_and_at_least_the_minimum():
    peaks = np.full(100, 2.0)
    peaks[[7, 70, 3]] = [30.0, 12.0, 3.5]  # two far out, one only a little above the rest
    assert export_quant.outlier_channels(peaks).tolist() == [7, 70]
    peaks[np.arange(100)] = np.linspace(1, 2, 100)  # no outliers at all: still the minimum, largest first
    assert export_quant.outlier_channels(peaks).tolist() == [98, 99][:export_quant.OUTLIER_MIN]


def test_calibration_finds_the_outlier_channels_and_the_split_keeps_fp32_outputs():
    model = _block()
    feeds = _feeds(20, seed=0)
    maxima = export_quant.activation_maxima(model, export_quant.down_projections(model), feeds)
    assert maxima["down"].shape == (WIDE,)
    expected = _run(model, feeds)
    assert export_quant.split_outliers(model, maxima) == {"down": OUTLIERS}
    onnx.checker.check_model(model)
    for got, want in zip(_run(model, feeds), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_split_int8_model_is_closer_to_fp32_than_plain_int8(tmp_path):
    src = tmp_path / "fp32.onnx"
    onnx.save(_block(), str(src))
    calibration, held_out = _feeds(20, seed=0), _feeds(30, seed=99)
    reference = _run(src, held_out)

    plain = tmp_path / "plain.onnx"
    quantize_dynamic(str(src), str(plain), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                     extra_options={"MatMulConstBOnly": True})
    split = tmp_path / "split.onnx"
    messages = []
    entry = export_quant.quantize_int8(src, split, calibration, log=messages.append)

    def error(path):
        return max(float(np.abs(got - want).max() / np.abs(want).max())
                   for got, want in zip(_run(path, held_out), reference))

    assert error(split) < error(plain) / 2, (error(split), error(plain))
    assert entry["outlier_split"]["channels"] == {"down": OUTLIERS}
    assert entry["outlier_split"]["calibration_texts"] == 20
    assert messages == [f"  down: channels {OUTLIERS} split off, kept fp32"]
    graph = onnx.load(str(split)).graph
    ops = {n.name: n.op_type for n in graph.node}
    assert ops["down/outlier_matmul"] == "MatMul"  # excluded: still fp32
    assert any(op in ("MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat") for op in ops.values())
    assert set(entry["nodes_excluded"]) <= set(ops)
    assert not list(tmp_path.glob("*.split.onnx")), "staging file left behind"

"""int8 weights for the traced fp32 graph.

Every MatMul with a constant weight becomes onnxruntime's MatMulNBits with 8-bit weights, one
scale per block of 32 input values of each output column, and ``accuracy_level`` 4: the
activations are quantised to int8 per token row and per block of 32 at run time and the products
are int8.  Scales that fine follow the outliers of the GELU outputs and of single tokens, which
one activation scale per tensor (``quantize_dynamic``, shipped until 2026-12-01) did not: that
bundle kept ~99.57% mean cosine to PyTorch, and its neighbour recall@10 was 0.92.  The table of
token embeddings (indexed by ``input_ids``) is stored int8 with one scale per token row; the
position and token-type tables (0.8 MB) stay fp32.  Figures and what else was measured:
docs/decisions/2026-12-01-int8-every-matmul-blockwise.md.

Nothing here is read back at run time: the manifest records ``INT8_SETTINGS`` and the encoder
just runs the graph.
"""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import numpy as np

INT8_SETTINGS = MappingProxyType(
    {
        "matmul": "MatMulNBits",  # every MatMul with a constant 2-D weight
        "bits": 8,
        "block_size": 32,  # one weight scale per 32 input values of an output column
        "symmetric": True,
        "accuracy_level": 4,  # int8 products; activations quantised per token row and block of 32
        "token_embeddings": "int8 per row",  # the table input_ids indexes; the other tables stay fp32
    }
)
TOKEN_INPUT = "input_ids"


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


def blockwise_matmuls(model, settings=INT8_SETTINGS):
    """Every MatMul with a constant weight as MatMulNBits; returns the new model."""
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
    )
    quantizer.process()
    return quantizer.model.model


def quantize_int8(src: Path, dst: Path, settings=INT8_SETTINGS) -> dict:
    """Quantise the fp32 graph at ``src`` into ``dst``; returns the manifest's ``quantization``."""
    import onnx

    model = onnx.load(str(src))
    tables = int8_token_embeddings(model)
    wanted = constant_matmuls(model)
    model = blockwise_matmuls(model, settings)
    left = constant_matmuls(model)
    made = sum(n.op_type == settings["matmul"] for n in model.graph.node)
    if left or made != len(wanted):
        raise RuntimeError(
            f"blockwise quantisation made {made} of {len(wanted)} {settings['matmul']}, left fp32: {left}"
        )
    onnx.save(model, str(dst))
    return {
        **settings,
        "method": "onnxruntime.quantization.matmul_nbits_quantizer",
        "weight_type": "int8",
        "activation_type": "int8, dynamic scale per token row and block",
        "matmuls_quantized": made,
        "token_embedding_tables": tables,
    }

"""int8 weights for the traced fp32 graph (``quantize_int8``), and the blockwise MatMulNBits pass."""

from __future__ import annotations

from pathlib import Path

# Chosen by measurement on verification/sentences.txt (figures in the README's export
# notes).  ORT's default (per-tensor int8) gives mean cosine 0.962 / min 0.858 against
# PyTorch; per-channel weight scales fix most of that (0.993 / 0.982).  reduce_range (7-bit
# weights) costs little here and keeps u8*s8 products clear of the int16 saturation of
# non-VNNI AVX2 CPUs, so vectors are the same on any x86 host (index build vs Lambda).
# The FFN down-projections of the first half of the layers are left out of that pass: their
# inputs (GELU outputs) have outliers that one uint8 scale per tensor handles worst; keeping
# them fp32 lifts the mean cosine from 0.9927 to 0.9957.  They then become onnxruntime's
# MatMulNBits: 8-bit weights with a scale per block of 32 input values, and activations
# quantised per token row and per block of 32 (accuracy_level 4 = int8 products), fine
# enough for those outliers.  Same gate figures as fp32 there (mean 0.99567, min 0.9896,
# recall@10 0.922), 5 MB less, and a short query 1.10 -> 0.79 ms (README's export notes).
INT8_SETTINGS = {
    "per_channel": True,
    "reduce_range": True,
    "op_types_to_quantize": ["MatMul", "Gather"],  # Gather: the embedding tables
    "exclude_down_projections": 0.5,  # share of layers, counted from the input side
    # what the excluded down-projections become; None keeps them fp32
    "excluded_as": {"op": "MatMulNBits", "bits": 8, "block_size": 32, "symmetric": True, "accuracy_level": 4},
}


def down_projections(path: Path) -> list[str]:
    """FFN output MatMuls (weight wider in than out, e.g. 1536x384), in layer order."""
    import onnx

    graph = onnx.load(str(path)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    return [
        n.name
        for n in graph.node
        if n.op_type == "MatMul"
        and len(shapes.get(n.input[1], ())) == 2
        and shapes[n.input[1]][0] > shapes[n.input[1]][1]
    ]


def quantize_int8(src: Path, dst: Path, settings: dict) -> dict:
    import logging
    import math

    from onnxruntime.quantization import QuantType, quantize_dynamic

    down = down_projections(src)
    exclude = down[: math.ceil(len(down) * settings["exclude_down_projections"])]
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic warns about pre-processing via logging
    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        per_channel=settings["per_channel"],
        reduce_range=settings["reduce_range"],
        op_types_to_quantize=settings["op_types_to_quantize"],
        nodes_to_exclude=exclude,
        extra_options={"MatMulConstBOnly": True},
    )
    blockwise = settings.get("excluded_as")
    if blockwise and exclude:
        quantize_blockwise(dst, exclude, blockwise)
    return {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "int8",
        "activation_type": "uint8, dynamic per-tensor scale per run",
        "per_channel": settings["per_channel"],
        "reduce_range": settings["reduce_range"],
        "op_types": list(settings["op_types_to_quantize"]),
        "matmul_const_b_only": True,
        "nodes_excluded": exclude,
        "nodes_excluded_why": "FFN down-projections of the first half of the layers: GELU outputs "
        "with outliers, too coarse for one activation scale per tensor",
        "nodes_excluded_as": (
            {
                **blockwise,
                "method": "onnxruntime.quantization.matmul_nbits_quantizer",
                "activation_type": "int8, dynamic scale per token row and block",
            }
            if blockwise and exclude
            else "fp32"
        ),
    }


def quantize_blockwise(path: Path, names: list[str], settings: dict) -> None:
    """Rewrite the named fp32 MatMuls of ``path`` in place as MatMulNBits (blockwise weights)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    model = onnx.load(str(path))
    # nodes_to_include only adds to the op types it quantises (every MatMul): exclude the rest by name
    wanted = set(names)
    others = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in wanted]
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=settings["bits"],
        block_size=settings["block_size"],
        is_symmetric=settings["symmetric"],
        accuracy_level=settings["accuracy_level"],
        nodes_to_include=names,
        nodes_to_exclude=others,
    )
    quantizer.process()
    done = sum(n.op_type == settings["op"] for n in quantizer.model.model.graph.node)
    if done != len(names):
        raise RuntimeError(f"expected {len(names)} {settings['op']} nodes after blockwise quantisation, got {done}")
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)

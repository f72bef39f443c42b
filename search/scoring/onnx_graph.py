"""A minimal ONNX protobuf writer: a ModelProto with one graph of a few nodes, no initializers.

The scoring kernels (``kernels.py``) run tiny graphs in onnxruntime (Cast + MatMul, MatMulInteger).
The ``onnx`` package that would build them is an export-time dependency and the run time may import
only onnxruntime, so the dozen protobuf fields they need are written here by hand.
"""

from __future__ import annotations

ELEM = {"float32": 1, "uint8": 2, "int8": 3, "int32": 6, "float16": 10}  # TensorProto.DataType
_IR_VERSION, _OPSET = 8, 17
_ATTR_INT = 2  # AttributeProto.AttributeType.INT


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def value(name: str, elem_type: int, dims: list) -> bytes:
    """ValueInfoProto: name, TypeProto{tensor_type{elem_type, shape{dim*}}}."""
    shape = b"".join(_field(1, _field(1, d) if isinstance(d, int) else _field(2, d)) for d in dims)
    tensor = _field(1, elem_type) + _field(2, shape)
    return _field(1, name) + _field(2, _field(1, tensor))


def node(op_type: str, inputs: list[str], outputs: list[str], **int_attributes: int) -> bytes:
    """NodeProto: input*, output*, name, op_type, attribute*."""
    out = b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs)
    out += _field(3, f"{op_type}_{outputs[0]}") + _field(4, op_type)
    for name, value in int_attributes.items():
        out += _field(5, _field(1, name) + _field(3, value) + _field(20, _ATTR_INT))
    return out


def model_bytes(nodes: list[bytes], inputs: list[bytes], outputs: list[bytes]) -> bytes:
    graph = (
        b"".join(_field(1, n) for n in nodes)
        + _field(2, "kernel")
        + b"".join(_field(11, i) for i in inputs)
        + b"".join(_field(12, o) for o in outputs)
    )
    return (
        _field(1, _IR_VERSION)
        + _field(2, "search.scoring.kernels")
        + _field(7, graph)
        + _field(8, _field(1, "") + _field(2, _OPSET))
    )


def session(*, nodes, inputs, outputs):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one query is one thread; concurrency comes from requests
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(
        model_bytes(nodes, inputs, outputs), sess_options=options, providers=["CPUExecutionProvider"]
    )

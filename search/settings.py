"""Every setting in one place: argument > environment variable > default.

``Settings.resolve(threads=2)`` reads the environment once and returns a frozen
object; nothing else in the package reads ``os.environ`` for its own settings.
``Settings.from_args(args)`` does the same for a parsed command line (``ARG_SETTINGS``
maps its options to settings); the CLI calls it once, before any command runs.
The README's settings table lists the same names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from search.errors import ConfigError
from search.hybrid import SENTENCE_SHARE

DEFAULT_MODEL_DIR = "build/model"
DEFAULT_INDEX_URI = "build/index"
DEFAULT_CACHE_DIR = "/tmp/search"


def _int(low: int | None = None, high: int | None = None):
    def parse(raw: Any) -> int:
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ValueError("must be a whole number") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _float(low: float, high: float):
    def parse(raw: Any) -> float:
        try:
            value = float(raw)
        except (TypeError, ValueError):
            value = float("nan")
        if not low <= value <= high:  # also rejects nan
            raise ValueError(f"must be between {low:g} and {high:g}")
        return value

    return parse


MAX_THREADS = 64  # a build starts this many embedding processes: a typo must not fork hundreds


def _threads(raw: Any) -> int | None:
    if raw in (None, "", "0", 0, "auto"):
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError):
        value = 0
    if not 1 <= value <= MAX_THREADS:
        raise ValueError(f"must be from 1 to {MAX_THREADS} or 'auto'")
    return value


def _str(raw: Any) -> str:
    return str(raw)


def _csv(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, (list, tuple)):
        return tuple(str(x) for x in raw)
    return tuple(part.strip() for part in str(raw).split(",") if part.strip())


def _bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _base_path(raw: Any) -> str:
    """ "" or "/" = none; otherwise "/prefix" without a trailing slash."""
    text = str(raw).strip().strip("/")
    if any(c in text for c in "?#% \t"):
        raise ValueError("must be a plain path such as /api")
    return f"/{text}" if text else ""


# name -> (environment variable, default, parser)
SPEC: dict[str, tuple[str, Any, Any]] = {
    "model_dir": ("SEARCH_MODEL_DIR", DEFAULT_MODEL_DIR, _str),
    "index_uri": ("SEARCH_INDEX_URI", DEFAULT_INDEX_URI, _str),
    "cache_dir": ("SEARCH_CACHE_DIR", DEFAULT_CACHE_DIR, _str),
    "threads": ("SEARCH_THREADS", None, _threads),
    "max_query_chars": ("SEARCH_MAX_QUERY_CHARS", 1000, _int(1, 100_000)),
    "max_k": ("SEARCH_MAX_K", 100, _int(1, 10_000)),
    "max_offset": ("SEARCH_MAX_OFFSET", 1000, _int(0, 1_000_000)),
    "max_batch": ("SEARCH_MAX_BATCH", 32, _int(1, 1024)),
    "max_body_bytes": ("SEARCH_MAX_BODY_BYTES", 64 * 1024, _int(1024, 10 * 1024 * 1024)),
    "query_cache_size": ("SEARCH_QUERY_CACHE_SIZE", 1024, _int(0, 1_000_000)),
    "hybrid_candidates": ("SEARCH_HYBRID_CANDIDATES", 100, _int(1, 10_000)),
    # the share of the keyword weight that sentences get in hybrid mode (`search tune` measures it)
    "hybrid_sentence_share": ("SEARCH_HYBRID_SENTENCE_SHARE", SENTENCE_SHARE, _float(0.0, 1.0)),
    "cpu_workers": ("SEARCH_CPU_WORKERS", 2, _int(0, 64)),  # 0: inline on the event loop (Lambda)
    "max_pending": ("SEARCH_MAX_PENDING", 128, _int(1, 100_000)),
    "cors_origins": ("SEARCH_CORS_ORIGINS", (), _csv),
    "refresh_seconds": ("SEARCH_INDEX_REFRESH_SECONDS", 300, _int(0, 86_400)),
    "page_in": ("SEARCH_PAGE_IN", True, _bool),
    "base_path": ("SEARCH_BASE_PATH", "", _base_path),
    # after loading, a low-priority thread checks every file's sha256 and the metadata store
    "verify_index": ("SEARCH_VERIFY_INDEX", True, _bool),
    "info_versions": ("SEARCH_INFO_VERSIONS", False, _bool),  # /info shows package versions
}


# command-line option (argparse ``dest``) -> setting; every command resolves these through ``from_args``
ARG_SETTINGS: dict[str, str] = {
    "model": "model_dir",
    "index": "index_uri",
    "out": "index_uri",  # build writes where serve and query read
    "cache_dir": "cache_dir",
    "threads": "threads",
    "cpu_workers": "cpu_workers",
    "sentence_share": "hybrid_sentence_share",
}


@dataclass(frozen=True)
class Settings:
    model_dir: str
    index_uri: str
    cache_dir: str
    threads: int | None
    max_query_chars: int
    max_k: int
    max_offset: int
    max_batch: int
    max_body_bytes: int
    query_cache_size: int
    hybrid_candidates: int
    hybrid_sentence_share: float
    cpu_workers: int
    max_pending: int
    cors_origins: tuple[str, ...]
    refresh_seconds: int
    page_in: bool
    base_path: str
    verify_index: bool
    info_versions: bool

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Arguments (not None) beat environment variables, which beat defaults."""
        env = os.environ if env is None else env
        unknown = set(overrides) - set(SPEC)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values = {}
        for name, (var, default, parse) in SPEC.items():
            if overrides.get(name) is not None:
                raw, source = overrides[name], name
            elif env.get(var) not in (None, ""):
                raw, source = env[var], var
            else:
                values[name] = default
                continue
            try:
                values[name] = parse(raw)
            except (TypeError, ValueError) as exc:
                shown = repr(raw) if len(str(raw)) <= 40 else repr(str(raw)[:40]) + "..."
                raise ConfigError(f"{source}={shown}: {exc}") from None
        return cls(**values)

    @classmethod
    def from_args(cls, args: Any, env: Mapping[str, str] | None = None) -> Settings:
        """The settings for a parsed command line: an option given (not None) beats its environment
        variable, which beats the default.  Options the command does not have are left to the
        environment.  Parsers must default these options to None, or the default would win."""
        overrides: dict[str, Any] = {}
        for dest, name in ARG_SETTINGS.items():
            value = getattr(args, dest, None)
            if value is not None:
                overrides[name] = value
        return cls.resolve(env, **overrides)


assert {f.name for f in fields(Settings)} == set(SPEC), "Settings fields and SPEC disagree"

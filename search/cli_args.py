"""Argument types of ``python -m search``: each turns one command-line value into what the commands
use, or raises ``argparse.ArgumentTypeError`` (a usage error in one line, exit 2)."""

from __future__ import annotations

import argparse
import math
from urllib.parse import urlsplit

from search.settings import MAX_THREADS


def _filters(pairs: list[str] | None) -> dict[str, list[str]]:
    """``["section=games", "section=x11", "lang=en"]`` -> ``{"section": ["games", "x11"], "lang": ["en"]}``."""
    out: dict[str, list[str]] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"--filter {pair!r}: expected FIELD=VALUE")
        out.setdefault(name.strip(), []).extend(v for v in value.split(",") if v != "" or value == "")
    return out


def _endpoint_url(raw: str) -> str:
    """An S3 endpoint must be an http(s) URL with a host (boto3 raises a bare ValueError otherwise)."""
    try:
        parts = urlsplit(raw)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != -1
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError("expected an http:// or https:// URL, such as http://localhost:9000")
    return raw


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def _byte_size(raw: str) -> int:
    """``4096``, ``512K``, ``4M``, ``1GiB`` (binary units) -> bytes, at least 1."""
    text = raw.strip().lower()
    number = text.rstrip("bgikm")
    try:
        size = int(float(number) * _UNITS[text[len(number) :].strip()])
    except (KeyError, ValueError, OverflowError):
        size = 0
    if size < 1:
        raise argparse.ArgumentTypeError("expected a size such as 4096, 512K, 4M or 1G (bytes, binary units)")
    return size


def _threads(raw: str) -> int | str:
    """--threads: 1 to MAX_THREADS, or ``auto`` (also 0), which beats SEARCH_THREADS as a number does."""
    text = raw.strip().lower()
    if text == "auto":
        return text
    return _int_in(text, 0, MAX_THREADS, f"expected a number from 1 to {MAX_THREADS} or auto")


def _int_in(raw: str, low: int, high: int | None, message: str) -> int:
    """A whole number from ``low`` to ``high`` (None: no limit), else a usage error saying ``message``."""
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(message)
    return value


def _shard(raw: str) -> str:
    """build --shard I/N, checked as the build pipeline checks it, so a bad one is a usage error."""
    from search.errors import ConfigError
    from search.index.records import parse_shard

    try:
        parse_shard(raw)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--shard ")) from None
    return raw


MAX_WORKERS = 64  # processes under `search serve` (each loads its own model copy), as SEARCH_CPU_WORKERS


def _workers(raw: str) -> int:
    """serve --workers: 1 to 64 processes (uvicorn forks as many as it is told)."""
    return _int_in(raw, 1, MAX_WORKERS, f"expected a number from 1 to {MAX_WORKERS}")


def _min_score(raw: str) -> float:
    """--min-score: a finite number from -1 to 1, as the HTTP API's ``min_score``."""
    try:
        score = float(raw)
    except ValueError:
        score = math.nan
    if not -1.0 <= score <= 1.0:  # also nan and the infinities
        raise argparse.ArgumentTypeError("expected a number from -1 to 1")
    return score


def _port(raw: str) -> int:
    return _int_in(raw, 0, 65535, "expected a port number from 0 to 65535")


def _eval_modes(value: str) -> list[str]:
    from search.searcher import MODES

    modes = list(dict.fromkeys(m.strip() for m in value.split(",") if m.strip()))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"--mode {value!r}: choose from {', '.join(MODES)} (comma-separated)")
    return modes


MAX_TOP_K = 10_000  # query/eval/tune -k: the HTTP API's largest k (SEARCH_MAX_K); beyond it SQLite overflows


def _top_k(value: str) -> int:
    return _int_in(value, 1, MAX_TOP_K, f"-k {value!r}: expected a whole number from 1 to {MAX_TOP_K}")


MAX_QUERY_OFFSET = 1_000_000  # query --offset: the largest SEARCH_MAX_OFFSET the HTTP API takes


def _offset(value: str) -> int:
    message = f"--offset {value!r}: expected a whole number from 0 to {MAX_QUERY_OFFSET}"
    return _int_in(value, 0, MAX_QUERY_OFFSET, message)


def _share(value: str) -> float:
    """--sentence-share: a number from 0 to 1."""
    from search.tuning import parse_grid

    try:
        shares = parse_grid(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(shares) != 1:
        raise argparse.ArgumentTypeError("expected one number from 0 to 1")
    return shares[0]


def _shares(value: str) -> tuple[float, ...]:
    """--grid: comma-separated numbers from 0 to 1."""
    from search.tuning import parse_grid

    try:
        return parse_grid(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _not_utf8(argv: list[str]) -> int | None:
    """Position of the first argument that is not valid UTF-8 (Python keeps such bytes as lone
    surrogates, which fail later wherever the text is encoded), or None."""
    for position, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            return position
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why ``serve`` cannot listen on host:port (in use, not allowed), or None: checked before uvicorn
    starts, so the answer is one line instead of its start-up log and exit code 3."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            sock.bind(address)
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None

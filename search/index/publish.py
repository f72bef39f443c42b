"""Putting a finished index where ``--out`` says, without deleting anything the build did not make.

``build_index`` calls, in this order:

    check_target(out, corpus=...)   before any work: refuse a place it must not write over
    tmp = make_temp(out)            a fresh folder beside ``out`` (``.<name>.tmp-XXXXXXXX``)
    with cleaned_up(tmp, out):      on failure: removes that folder, which this build made, and
        ... writes into tmp ...     turns a full disk into one line
        publish(tmp, out, ...)      checks again, then renames tmp into place

``out`` may be replaced only when it is

* missing (its parent folders are created),
* an empty folder, or
* an index this tool wrote: its ``manifest.json`` says ``search-index/...`` and the folder holds
  nothing the manifest does not list.  A complete index of the current format is replaced as is;
  a damaged one (listed files missing or of another size) or one of another format version only
  with ``force``.

Anything else is refused with one line (:class:`IndexBuildError`), ``force`` or not: a file, a
symbolic link, a folder that is not an index, an index folder holding files the index does not
list, a model bundle, the corpus itself or a folder holding the corpus.  The old index is moved
aside and only the files its manifest lists are deleted, so a file dropped into it meanwhile
survives (in the ``.<name>.old-XXXXXXXX`` folder left beside it), as does a listed file that
cannot be deleted: the new index is in place by then, and the build succeeds.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from search.errors import IndexBuildError
from search.fileutil import NO_SPACE, read_json
from search.index.format import INDEX_FORMAT as CURRENT_FORMAT
from search.index.format import MANIFEST_NAME

FORMAT_PREFIX = "search-index/"  # every index format this tool ever wrote


@dataclass(frozen=True)
class Target:
    path: Path
    state: str  # "missing" | "empty" | "index"
    own_files: tuple[str, ...] = ()  # the replaced index's entries: its manifest and the files it lists


def check_target(out: str | os.PathLike, *, corpus: str | os.PathLike | None = None, force: bool = False) -> Target:
    """What ``out`` is now; raises IndexBuildError when the build must not write there."""
    out = Path(out)
    where = str(out)
    if corpus is not None:
        corpus_real, out_real = Path(corpus).resolve(), out.resolve()
        if corpus_real == out_real:
            raise IndexBuildError(f"--out {where} is the corpus file; give the index its own folder")
        if out_real in corpus_real.parents:
            raise IndexBuildError(f"--out {where} holds the corpus {corpus}; give the index its own folder")
    if out.is_symlink():
        raise IndexBuildError(f"--out {where} is a symbolic link; refusing to replace it (give a folder)")
    if not out.exists():
        _check_parent(out)
        return Target(out, "missing")
    if not out.is_dir():
        raise IndexBuildError(f"--out {where} is a file, not an index folder; refusing to replace it")
    try:
        entries = set(os.listdir(out))
    except OSError as exc:
        raise IndexBuildError(f"--out {where}: cannot list the folder ({exc.strerror})") from None
    if not entries:
        return Target(out, "empty")
    if MANIFEST_NAME not in entries:
        raise IndexBuildError(
            f"--out {where} is a folder that is not an index (no {MANIFEST_NAME}); refusing to replace it"
        )
    listed, problem = _own_index(out)  # raises when the manifest is not one this tool wrote
    refuse_strays(where, entries, listed | {MANIFEST_NAME}, "index")
    if problem and not force:
        raise IndexBuildError(f"--out {where} is an index, but {problem}; pass --force to replace it")
    return Target(out, "index", tuple(sorted(entries & (listed | {MANIFEST_NAME}))))


def refuse_strays(where: str | os.PathLike, entries: set[str], own: set[str], what: str) -> None:
    """IndexBuildError when the folder at ``--out`` holds entries its manifest does not list: a
    rebuild deletes only what it listed, so it must not take such a folder over."""
    stray = sorted(entries - own)
    if stray:
        more = f" and {len(stray) - 1} more" if len(stray) > 1 else ""
        raise IndexBuildError(
            f"--out {where} holds files the {what} does not list ({stray[0]!r}{more}); refusing to delete them"
        )


def _check_parent(out: Path) -> None:
    """The nearest existing ancestor must be a folder this process may write in."""
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise IndexBuildError(f"--out {out} is under {parent}, which is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise IndexBuildError(f"--out {out}: cannot write in {parent} (permission denied)")


def _own_index(out: Path) -> tuple[set[str], str | None]:
    """(names the manifest lists, why it is not a complete current index or None)."""
    manifest_path = out / MANIFEST_NAME
    refuse = f"--out {out} holds a {MANIFEST_NAME} that is not an index this tool wrote"
    try:
        manifest = read_json(manifest_path)
    except (OSError, ValueError):
        raise IndexBuildError(f"{refuse} (unreadable); refusing to replace it") from None
    fmt, files = manifest.get("format"), manifest.get("files")
    if not (isinstance(fmt, str) and fmt.startswith(FORMAT_PREFIX)) or not isinstance(files, dict):
        raise IndexBuildError(f"{refuse} (format {str(fmt)[:40]!r}); refusing to replace it")
    for name in files:
        if not isinstance(name, str) or name in ("", ".", "..", MANIFEST_NAME) or "/" in name or os.sep in name:
            raise IndexBuildError(f"{refuse} (it lists {str(name)[:40]!r}); refusing to replace it")
    if fmt != CURRENT_FORMAT:
        return set(files), f"of format {fmt[:40]!r} (this build writes {CURRENT_FORMAT!r})"
    for name, info in sorted(files.items()):
        path = out / name
        if not path.is_file():
            return set(files), f"damaged ({name} is missing)"
        size = info.get("bytes") if isinstance(info, dict) else None
        if size != path.stat().st_size:
            return set(files), f"damaged ({name} is not the size its manifest says)"
    return set(files), None


def make_temp(out: str | os.PathLike) -> Path:
    """A new, empty folder beside ``out`` that this build owns (and alone may remove)."""
    out = Path(out)
    try:
        out.absolute().parent.mkdir(parents=True, exist_ok=True)
        return _new_folder(out, "tmp")
    except OSError as exc:
        raise IndexBuildError(f"--out {out}: cannot create a folder beside it ({exc.strerror or exc})") from None


def _new_folder(out: Path, kind: str) -> Path:
    """``.<name>.<kind>-XXXXXXXX`` beside ``out``, created here (mkdir is exclusive), mode from the umask."""
    while True:
        path = out.absolute().parent / f".{out.name}.{kind}-{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def publish(tmp: Path, out: str | os.PathLike, *, corpus: str | os.PathLike | None = None, force: bool = False) -> None:
    """Rename the finished ``tmp`` to ``out``, checking ``out`` again first (the build took a while)."""
    target = check_target(out, corpus=corpus, force=force)
    out = target.path
    try:
        if target.state == "missing":
            os.rename(tmp, out)  # fails rather than replace a non-empty folder created meanwhile
        elif target.state == "empty":
            os.rmdir(out)  # fails if a file appeared meanwhile
            os.rename(tmp, out)
        else:
            swap(tmp, out, target.own_files)
    except IndexBuildError:
        raise
    except OSError as exc:
        raise IndexBuildError(f"--out {out}: cannot put the new index in place ({exc.strerror or exc})") from None


def swap(tmp: Path, out: Path, own_files: tuple[str, ...]) -> None:
    """Rename ``tmp`` over the folder at ``out``, then delete only ``own_files`` of the old one."""
    # rename(2) may replace an empty folder: reserve a unique name for the old index first.
    aside = _new_folder(out, "old")
    os.rename(out, aside)
    try:
        os.rename(tmp, out)
    except OSError:
        os.rename(aside, out)  # put the old index back
        raise
    for name in own_files:  # the new index is in place: what cannot be deleted stays beside it
        try:
            (aside / name).unlink()
        except OSError:
            pass  # gone already, a folder now, or not deletable (read-only)
    try:
        aside.rmdir()
    except OSError:
        pass  # something not ours was put there meanwhile: leave it, never delete it


SQLITE_FULL = 13


def disk_full(exc: BaseException, out: str | os.PathLike) -> IndexBuildError | None:
    """The one-line error for a build that ran out of disk space (None: ``exc`` is something else).
    The build writes beside ``out``, so that is the disk that is full."""
    full = isinstance(exc, OSError) and exc.errno in NO_SPACE
    if isinstance(exc, sqlite3.OperationalError):  # SQLite reports ENOSPC as SQLITE_FULL
        full = getattr(exc, "sqlite_errorcode", None) == SQLITE_FULL or "database or disk is full" in str(exc)
    if not full:
        return None
    where = Path(out).absolute().parent
    return IndexBuildError(
        f"--out {out}: no space left on the device of {where} while writing the index; free some space "
        "there or build elsewhere (nothing was published, the index there is unchanged)"
    )


def discard(tmp: Path) -> None:
    """Remove a folder ``make_temp`` made (after a failed build)."""
    shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def cleaned_up(tmp: Path, out: str | os.PathLike) -> Iterator[None]:
    """Around the writing of ``tmp`` (make_temp's) for ``out``: on any failure, Ctrl-C and SIGTERM
    included, ``tmp`` is removed, and a full disk becomes one IndexBuildError line."""
    try:
        yield
    except BaseException as exc:
        discard(tmp)
        full = disk_full(exc, out)
        if full is not None:
            raise full from None
        raise

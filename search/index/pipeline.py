"""Build, shard and merge with local folders or ``s3://`` prefixes on either side.

Used by ``python -m search build|merge`` and by the build pipeline's Lambda (build_handler.py).
Work happens in local folders; an ``s3://`` output is uploaded the way ``search upload`` does
(data under ``data/<version>/`` first, the manifest last), and an ``s3://`` input is downloaded
and sha256-checked first.  Reuse defaults to whatever is at ``out`` (index or shard folder).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from search.index import publish
from search.index.builder import BuildOptions, build_index, model_info
from search.index.corpus import CorpusSpec
from search.index.reuse import Reuse, open_reuse

DEFAULT = "default"  # reuse what is at --out


@dataclass
class Outcome:
    manifest: dict
    out: str
    reuse_note: str | None  # one line when an existing index could not be reused
    uploaded: object = None  # an objects.UploadReport for an s3:// out


def is_s3(location) -> bool:
    return str(location).startswith("s3://")


def _work_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def _reuse_for(reuse, out, encoder, dtype: str, work: Path) -> Reuse | None:
    if reuse is None:
        return None
    location = out if reuse == DEFAULT else reuse
    source = open_reuse(location, model=model_info(encoder), dtype=dtype, dimension=encoder.dimension, work_dir=work)
    if reuse != DEFAULT and not source.usable and source.reason is None:
        source.reason = "there is no index there"  # asked for by name: say so, unlike a first build at --out
    return source


def reuse_note(source: Reuse | None) -> str | None:
    if source is None or source.reason is None:
        return None
    return f"not reusing {source.source}: {source.reason}; embedding every text"


def build(
    corpus: str,
    out: str,
    encoder,
    spec: CorpusSpec,
    options: BuildOptions,
    *,
    shard: tuple[int, int] | None = None,
    reuse: str | None = DEFAULT,
    stream=None,
) -> Outcome:
    """An index (``shard`` None) or one shard folder at ``out``, reusing vectors from ``reuse``
    (DEFAULT: what is at ``out``; None: nothing)."""
    from search.index.shards import build_shard

    stream = stream or sys.stderr
    if shard is None and not is_s3(out):  # refuse a bad --out before any work or note (publish.py)
        publish.check_target(out, corpus=corpus, force=options.force)
    work = _work_dir("search-build-")
    try:
        source = _reuse_for(reuse, out, encoder, options.dtype, work / "reuse")
        note = reuse_note(source)
        if note:
            print(note, file=stream)
        options = dataclasses.replace(options, reuse=source)
        target = work / "out" if is_s3(out) else Path(out)
        try:
            if shard is None:
                manifest = build_index(corpus, encoder, target, spec, options)
            else:
                manifest = build_shard(corpus, encoder, target, spec, options, shard)
        finally:
            if source is not None:
                source.close()
        uploaded = _upload(target, out, options.show_progress) if is_s3(out) else None
        return Outcome(manifest, str(out), note, uploaded)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def merge(sources: list[str], out: str, options: BuildOptions) -> Outcome:
    """Merge shard folders (local or ``s3://``) into the index at ``out`` (local or ``s3://``)."""
    from search.index.merge import merge_shards
    from search.storage.objects import download_files

    work = _work_dir("search-merge-")
    try:
        folders = []
        for n, source in enumerate(sources):
            if is_s3(source):
                folder = work / f"shard-{n}"
                download_files(source, folder, show_progress=options.show_progress)
                folders.append(folder)
            else:
                folders.append(Path(source))
        target = work / "out" if is_s3(out) else Path(out)
        manifest = merge_shards(folders, target, options)
        uploaded = _upload(target, out, options.show_progress) if is_s3(out) else None
        return Outcome(manifest, str(out), None, uploaded)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _upload(folder: Path, uri: str, show_progress: bool):
    from search.storage.objects import upload_folder

    return upload_folder(folder, uri, show_progress=show_progress)


def summary(outcome: Outcome, what: str) -> str:
    """The one line the CLI prints (and the handler logs) after a build, shard or merge."""
    m = outcome.manifest
    build = m.get("build") or {}
    skipped = m["corpus"].get("skipped", 0)
    parts = [f"{m['count']} items, {m['dimension']}-d {m['dtype']}, version {m['version']}"]
    by = " by its shards" if "shards" in build else ""  # a merge embeds nothing: it adds up its shards
    parts.append(f"{build.get('reused', 0)} vectors reused, {build.get('embedded', 0)} embedded{by}")
    if "titles_embedded" in build:
        parts.append(f"titles {build['titles_reused']} reused, {build['titles_embedded']} embedded")
    if skipped:
        parts.append(f"{skipped} bad records skipped")
    if build.get("fields_without_values"):
        parts.append(f"no record has field {', '.join(build['fields_without_values'])} (misspelt?)")
    where = outcome.out + (" (uploaded)" if outcome.uploaded is not None else "")
    return f"{what} {where}: " + ", ".join(parts) + f" in {m['build_seconds']}s"

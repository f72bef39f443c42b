"""The index: a folder with a manifest, a memory-mapped ``embeddings.npy`` and a metadata store.

    build/index/
      manifest.json       format, count, dimension, dtype, model fingerprint, fields, sha256 of every file
      embeddings.npy      (count, dimension) float32 | float16 | int8, opened with mmap_mode="r"
      scales.npy          int8 only: per-row float32 scale (vector = int8 row * scale)
      scan-int8.npy       float32/float16 only (optional): the int8 scan copy of the stored vectors,
      scan-scales.npy       its per-row scales and the L2 distance of each stored vector from its
      scan-residuals.npy    int8 form (an error bound; see kernels.ScannedKernel)
      prefilter-int4.npy  optional, any dtype: the int4 copy read by a first pass over every row,
      prefilter-scales.npy  its row scales and residual norms (an upper bound of each row's
      prefilter-residuals.npy score; see prefilter.py)
      field-<name>.npy    int32 value codes per row, one per stored field (filters)
      metadata.sqlite     id, title, text, fields per row; value dictionaries

Search is exact: every (filtered) row is scored, in chunks so memory stays bounded,
and ties are broken by row number so the same query gives the same order everywhere.
With a scan copy, rows are scored from int8 (a quarter of the float32 bytes) and only rows
that may reach the top are rescored from the stored vectors: the same results, faster.
With an int4 prefilter copy (half the bytes of int8) a first pass bounds every row's score and
only the rows that can still reach the top go on to the kernels above.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.errors import IndexCorruptError, IndexLoadError, QueryError
from search.index.format import EMBEDDINGS_NAME
from search.index.metadata import MetadataReader
from search.index.opening import folder_id, open_consistently, open_parts
from search.index.titles import title_cosines
from search.index.verify import ScoreGuard, verify_files
from search.scoring.kernel_protocol import Kernel, ScanBlock, Stored
from search.scoring.kernel_protocol import top_rows as _top
from search.scoring.kernels import kernel_for, scanned_kernel_for
from search.scoring.prefilter import PassRate, Prefilter

CHUNK_ROWS = 65536  # rows scored per step: 65536 x 384 float32 = 96 MiB of products at most
# Below this share of rows left by the filters, gathering them is cheaper than the int4 pass over all.
PREFILTER_MIN_DENSITY = 0.25
SEED_FACTOR = 2  # the first pass's floor: the need-th best exact score of this many x need seed rows
MAX_HEAP_EXTRA = 4096  # rows left out by filters that the kernel's seed heap may absorb (else a numpy pass)


@dataclass(frozen=True)
class Hit:
    row: int
    score: float


class SearchIndex:
    """An opened index.  Read-only and thread-safe; close() drops the memory maps."""

    def __init__(
        self,
        path: Path,
        manifest: dict,
        embeddings: np.ndarray,
        scales: np.ndarray | None,
        codes: dict[str, np.ndarray],
        metadata: MetadataReader,
        scan: ScanBlock | None = None,
        prefilter: Prefilter | None = None,
        titles: tuple[np.ndarray, np.ndarray] | None = None,
    ):
        self.path = path
        self.titles = titles  # (int8 rows, scales) of the titles embedded alone, or None (titles.py)
        self.manifest = manifest
        self.embeddings = embeddings
        self.scales = scales
        self.codes = codes
        self.metadata = metadata
        self.scan = scan  # (vectors, int8 rows, scales, residuals) when the index has a scan copy
        self.prefilter = prefilter  # the int4 copy, where the index has one and the compiled kernel reads it
        self.folder_id: tuple[int, int, int] | None = None  # (st_dev, st_ino, st_ctime_ns) of the folder open() opened
        self.guard = ScoreGuard(path)  # no NaN or out-of-range score is ever returned (verify.py)
        self.pass_rate = PassRate()  # whether the first pass pays on this index's data (see prefilter.py)
        # per dtype, see kernels.py; the scan copy is used where the compiled int8 kernel is built
        scanned = scanned_kernel_for(str(manifest["dtype"])) if scan is not None else None
        self.kernel: Kernel = scanned or kernel_for(str(manifest["dtype"]))

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        folder: str | Path,
        *,
        model_fingerprint: str | None = None,
        dimension: int | None = None,
        verify: bool = False,
    ) -> SearchIndex:
        """Open and validate; ``verify=True`` also checks every file's sha256 (slow, not for cold start).
        The files come from one version even while a rebuild replaces the folder (see opening.py)."""
        path = Path(folder)

        def once() -> SearchIndex:
            return cls(path, *open_parts(path, model_fingerprint=model_fingerprint, dimension=dimension, verify=verify))

        index, folder_id = open_consistently(path, once)
        index.folder_id = folder_id
        return index

    def close(self) -> None:
        """Release the maps.  numpy arrays hold the mmap's buffer, so the pages are unmapped when the
        last array (including one an in-flight query still uses) is garbage collected, never under it."""
        self.metadata.close()
        self.embeddings = self.scales = self.scan = self.prefilter = self.titles = None  # type: ignore[assignment]
        self.codes = {}

    # -- facts -------------------------------------------------------------------------------
    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def dimension(self) -> int:
        return int(self.manifest["dimension"])

    @property
    def dtype(self) -> str:
        return str(self.manifest["dtype"])

    @property
    def fields(self) -> list[str]:
        return list(self.manifest["fields"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    def page_in(self) -> int:
        """Fault in every page of the mapped files (one byte read per page) so the first query
        does not pay for lazy loading from disk, EFS or a lazily loaded image; returns bytes."""
        total = 0
        for arr in (
            self.embeddings,
            self.scales,
            *(self.scan[1:4] if self.scan else ()),
            *(self.prefilter[:3] if self.prefilter else ()),
            *(self.titles or ()),
            *self.codes.values(),
        ):
            if arr is None or arr.size == 0:
                continue
            mm = getattr(arr, "_mmap", None)
            if isinstance(mm, mmap.mmap) and hasattr(mmap, "MADV_WILLNEED"):
                mm.madvise(mmap.MADV_WILLNEED)  # lets the kernel read ahead while we walk
            int(arr.reshape(-1).view(np.uint8)[:: mmap.PAGESIZE].sum())
            total += arr.nbytes
        return total

    # -- vectors -----------------------------------------------------------------------------
    def vector(self, row: int) -> np.ndarray:
        """The stored vector of a row as float32 (dequantised for int8)."""
        vec = np.asarray(self.embeddings[row], dtype=np.float32)
        if self.scales is not None:
            vec = vec * self.scales[row]
        if not np.isfinite(vec).all():
            raise IndexCorruptError(
                f"row {row}: the stored vector is not finite", path=str(self.path / EMBEDDINGS_NAME)
            )
        return vec

    def title_cosines(self, rows: Sequence[int], query: np.ndarray) -> np.ndarray | None:
        """Cosines of the listed rows' titles with the query (-inf: no title), or None without titles."""
        if self.titles is None:
            return None
        return title_cosines(*self.titles, np.asarray(rows, dtype=np.int64), query)

    def verify(self, pause=None) -> int:
        """Every file's sha256 and the metadata store's quick_check (slow: reads everything once).

        Files are read by name: when a rebuild has renamed a new folder over this path since it was
        opened, a mismatch says nothing about the files this index has mapped, and is an
        IndexLoadError saying so, not an IndexCorruptError."""
        try:
            return verify_files(self.path, self.manifest, pause=pause)
        except IndexCorruptError:
            now = folder_id(self.path)  # (device, inode) only: a file added to the folder changes its ctime
            if self.folder_id is not None and (now is None or now[:2] != self.folder_id[:2]):
                raise IndexLoadError(
                    "replaced by another version since it was opened; its files are no longer at this path",
                    path=str(self.path),
                ) from None
            raise

    def filter_mask(self, filters: Mapping[str, Sequence[str]] | None) -> np.ndarray | None:
        """Boolean row mask for ``{field: [any of values]}``; fields AND together, values OR."""
        if not filters:
            return None
        mask = np.ones(self.count, dtype=bool)
        for name, values in filters.items():
            if name not in self.codes:
                known = ", ".join(self.fields) or "none"
                raise QueryError(f"unknown filter field {name!r} (filterable: {known})")
            values = [values] if isinstance(values, str) else list(values)
            wanted = self.metadata.codes_for(name, values) if values else []
            mask &= np.isin(self.codes[name], np.asarray(wanted, dtype=np.int32))
        return mask

    def search(
        self,
        query: np.ndarray,
        *,
        k: int = 10,
        offset: int = 0,
        min_score: float | None = None,
        filters: Mapping[str, Sequence[str]] | None = None,
        exclude_rows: Sequence[int] = (),
    ) -> list[Hit]:
        """Exact top ``k`` after skipping ``offset``, best first, ties by lower row."""
        if k < 1 or offset < 0:
            raise QueryError("k must be >= 1 and offset >= 0")
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dimension:
            raise QueryError(f"query has dimension {query.shape[0]}, index has {self.dimension}")
        mask = self.filter_mask(filters)
        if exclude_rows:
            mask = np.ones(self.count, dtype=bool) if mask is None else mask.copy()
            mask[np.asarray(exclude_rows, dtype=np.int64)] = False
        need = k + offset
        best_rows = np.empty(0, dtype=np.int64)
        best_scores = np.empty(0, dtype=np.float32)
        prepared = self.kernel.prepare(query)
        pool = self.count if mask is None else int(np.count_nonzero(mask))  # rows the filters leave
        if self.prefilter is not None and pool >= PREFILTER_MIN_DENSITY * self.count and self.pass_rate.use():
            best_rows, best_scores = self._search_first_pass(query, mask, pool, need, min_score, prepared)
            return [Hit(int(r), float(s)) for r, s in zip(best_rows[offset:need], best_scores[offset:need])]
        for start in range(0, self.count, CHUNK_ROWS):
            stop = min(start + CHUNK_ROWS, self.count)
            # `need` rows already score >= floor: quantised kernels rescore only rows that can beat it
            floor = float(best_scores[need - 1]) if best_scores.size >= need else -np.inf
            if min_score is not None:
                floor = max(floor, min_score)
            if mask is not None:
                rows = start + np.flatnonzero(mask[start:stop])
                if rows.size == 0:
                    continue
                rows, scores = self._score_listed(rows, query, need=need, floor=floor, prepared=prepared)
            else:
                rows, scores = self._score_range(start, stop, query, need=need, floor=floor, prepared=prepared)
            best_rows, best_scores = _keep_top(best_rows, best_scores, *self.guard.keep(rows, scores), need, min_score)
        return [Hit(int(r), float(s)) for r, s in zip(best_rows[offset:need], best_scores[offset:need])]

    @property
    def stored(self) -> Stored:
        """What the kernel scores (read at each search: tests and benchmarks swap the parts)."""
        return Stored(self.embeddings, self.scales, self.scan)

    def _search_first_pass(
        self, query: np.ndarray, mask: np.ndarray | None, pool: int, need: int, min_score: float | None, prepared
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``need`` (rows, exact scores) through the int4 first pass: an upper bound for
        every row (one float per row), a floor from the ``SEED_FACTOR x need`` rows with the best
        int4 scores, scored exactly, then the storage kernel on the rows whose bound reaches the
        floor only, in chunks, the floor rising as they go.  Seeding once for the whole index rather
        than per chunk lets ~5% instead of ~9% of 1M random rows through (measured)."""
        prefilter = self.prefilter
        assert prefilter is not None  # search() takes this path only with one
        columns, query_norm = self.kernel.query_columns(query, prepared), float(np.linalg.norm(query))
        seeds = min(pool, SEED_FACTOR * need) if pool > need else 0
        # One call for the whole index: the kernel also keeps the rows with the highest int4 scores,
        # the seeds (ranking by the bound instead would favour loosely quantised rows and give a
        # low floor: measured 40% instead of 15% of 64k random rows let through).
        # A few rows left out (exclude_rows, a filter dropping little): the heap keeps that many more.
        excluded = self.count - pool
        heap = seeds + excluded if excluded <= MAX_HEAP_EXTRA else 0
        upper, top = prefilter.upper_bounds(slice(None), columns, query_norm, top=heap)
        floor = -np.inf if min_score is None else float(min_score)
        best_rows, best_scores = np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if not seeds:  # every row is needed: nothing to prune
            candidates = np.arange(self.count) if mask is None else np.flatnonzero(mask)
        else:
            if mask is not None:
                upper[~mask] = -np.inf
                if heap:
                    top = top[mask[top]]  # at least ``seeds`` rows remain
                else:
                    estimate = np.where(mask, upper - np.asarray(prefilter.residuals) * np.float32(query_norm), -np.inf)
                    top = np.argpartition(estimate, self.count - seeds)[self.count - seeds :]
                    del estimate
            seed = np.sort(top)
            rows, scores = self._score_listed(seed, query, need=need, floor=-np.inf, prepared=prepared)
            best_rows, best_scores = _keep_top(best_rows, best_scores, *self.guard.keep(rows, scores), need, min_score)
            if best_scores.size >= need:
                floor = max(floor, float(best_scores[need - 1]))
            upper[seed] = -np.inf  # scored already
            # -inf marks seeds (scored) and filtered-out rows: never candidates, even while the floor is
            # still -inf (fewer than ``need`` seeds kept, e.g. rows the score guard ranked out)
            candidates = np.flatnonzero((upper >= np.float32(floor)) & (upper > -np.inf))
        for piece in range(0, candidates.size, CHUNK_ROWS):
            if best_scores.size >= need:
                floor = max(floor, float(best_scores[need - 1]))
            rows, scores = self._score_listed(
                candidates[piece : piece + CHUNK_ROWS], query, need=need, floor=floor, prepared=prepared
            )
            best_rows, best_scores = _keep_top(best_rows, best_scores, *self.guard.keep(rows, scores), need, min_score)
        self.pass_rate.record(candidates.size + seeds, pool)
        return best_rows, best_scores

    def _score_listed(self, rows: np.ndarray, query: np.ndarray, *, need: int, floor: float, prepared):
        """(rows, exact scores) of the listed (sorted) rows that may still enter the top ``need``."""
        return self.kernel.score(self.stored, rows, query, need=need, floor=floor, prepared=prepared)

    def _score_range(self, start: int, stop: int, query: np.ndarray, *, need: int, floor: float, prepared):
        """(rows, exact scores) of the rows in [start, stop) that may still enter the top ``need``."""
        return self.kernel.score(self.stored, slice(start, stop), query, need=need, floor=floor, prepared=prepared)


def _keep_top(best_rows, best_scores, rows, scores, need: int, min_score: float | None):
    """Merge scored rows into the running best ``need`` (dropping those under ``min_score``)."""
    if min_score is not None:
        keep = scores >= min_score
        rows, scores = rows[keep], scores[keep]
    return _top(np.concatenate([best_rows, rows]), np.concatenate([best_scores, scores]), need)

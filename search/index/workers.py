"""Embedding worker processes for builds: one encoder per process, one onnxruntime thread each.

What the threads did (measured on the 2-core machine here, short texts, 2 worker threads; from
/proc/<pid>/task/<tid>/schedstat and ``py-spy record --gil``): each worker thread was on a CPU
25-27% of the time, waiting on the run queue 71-72% and blocked (GIL, locks) only 3%; some thread
held the GIL 19% of the embedding time; the build's main thread (SQLite reads, row writes) used
2%.  So on this machine neither the GIL, nor the writer, nor onnxruntime (one intra-op thread per
run, runs in parallel) held two threads to one core: the run-queue waits were other sessions: Linux autogroup shares the CPUs per session, so
while one other session is busy a build gets one core's share, threads or processes alike
(bench/cores.py, docs/build-pipeline.md).  The GIL share does grow with the worker count: each worker holds it ~10% of its
time on short texts, so 6 threads (a 10 GB Lambda's 6 vCPUs) would want it ~60% of the time.
Processes share nothing: each embeds its chunk of texts on its own core, and the build process
only reads texts from SQLite and writes rows.  Vectors are the same bits as in process (same
model, same session settings, one text per run).

Protocol over the child's stdin/stdout (no pickle): a request is a 4-byte big-endian length and a
UTF-8 JSON array of texts; the child first writes ``R`` once loaded; an answer is a status byte and a length, then float32 rows (``V``) or
a UTF-8 message (``E``).  ``python -m search.index.workers MODEL_DIR`` is the child.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from search.errors import EncodeError, ModelLoadError

CHUNK_TEXTS = 32  # texts per request: a round trip per ~50 ms of work, answers < 64 KiB of pipe
LOOKAHEAD_CHUNKS = 4  # per worker: requests queued while the others compute
MIN_TEXTS = 1000  # fewer texts than this: threads (a process start costs about a second)
HEADER = struct.Struct(">I")


class WorkerPool:
    """``workers`` child processes embedding chunks of texts; ``embed_stream`` keeps input order."""

    def __init__(self, model_dir, workers: int, dimension: int):
        self.dimension = dimension
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), SEARCH_THREADS="1")
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-s", "-m", "search.index.workers", str(model_dir)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            for _ in range(max(1, workers))
        ]
        self.free: queue.Queue = queue.Queue()
        try:
            for proc in self.procs:  # each child says R once its encoder is loaded, or E and why not
                assert proc.stdout is not None
                status = proc.stdout.read(1)
                if status != b"R":
                    (length,) = HEADER.unpack(proc.stdout.read(HEADER.size) or b"\0\0\0\0")
                    message = proc.stdout.read(length).decode("utf-8", "replace")
                    raise ModelLoadError(message or f"an embedding worker failed to start (exit code {proc.poll()})")
                self.free.put(proc)
        except BaseException:
            self.close()
            raise

    def _run(self, texts: list[str]) -> np.ndarray:
        proc = self.free.get()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            body = json.dumps(texts, ensure_ascii=False).encode("utf-8")
            proc.stdin.write(HEADER.pack(len(body)) + body)
            proc.stdin.flush()
            head = proc.stdout.read(1 + HEADER.size)
            if len(head) < 1 + HEADER.size:
                raise EncodeError(f"an embedding worker stopped (exit code {proc.poll()})")
            status, (length,) = head[:1], HEADER.unpack(head[1:])
            data = proc.stdout.read(length)
            if status == b"E":
                raise EncodeError(data.decode("utf-8", "replace"))
            return np.frombuffer(data, dtype=np.float32).reshape(len(texts), self.dimension)
        finally:
            self.free.put(proc)

    def embed_stream(self, texts: Iterable[str]) -> Iterator[np.ndarray]:
        with ThreadPoolExecutor(max_workers=len(self.procs)) as pool:
            pending: list = []
            chunk: list[str] = []
            for text in texts:
                chunk.append(text)
                if len(chunk) >= CHUNK_TEXTS:
                    pending.append(pool.submit(self._run, chunk))
                    chunk = []
                    if len(pending) >= len(self.procs) * LOOKAHEAD_CHUNKS:
                        yield from pending.pop(0).result()
            if chunk:
                pending.append(pool.submit(self._run, chunk))
            for future in pending:
                yield from future.result()

    def close(self) -> None:
        for proc in self.procs:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()  # end of input: the child exits
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def embed_stream(encoder, texts: Iterable[str], *, workers: int, expected: int) -> Iterator[np.ndarray]:
    """Vectors in input order: processes for big jobs on several cores, else the encoder's threads."""
    if workers <= 1 or expected < MIN_TEXTS or getattr(encoder, "bundle", None) is None:
        yield from encoder.embed_stream(texts, workers=workers)
        return
    if not hasattr(encoder.bundle, "path"):
        yield from encoder.embed_stream(texts, workers=workers)
        return
    with WorkerPool(encoder.bundle.path, workers, encoder.dimension) as pool:
        yield from pool.embed_stream(texts)


def _serve(model_dir: str) -> int:
    from search.model.encoder import Encoder

    out = sys.stdout.buffer
    inp = sys.stdin.buffer
    try:
        encoder = Encoder.load(model_dir, threads=1)
    except ModelLoadError as exc:
        message = str(exc).encode("utf-8")
        out.write(b"E" + HEADER.pack(len(message)) + message)
        out.flush()
        return 1
    out.write(b"R")
    out.flush()
    while True:
        head = inp.read(HEADER.size)
        if len(head) < HEADER.size:
            return 0
        (length,) = HEADER.unpack(head)
        try:
            texts = json.loads(inp.read(length).decode("utf-8"))
            data = np.ascontiguousarray(encoder.embed(texts), dtype=np.float32).tobytes()
            out.write(b"V" + HEADER.pack(len(data)) + data)
        except Exception as exc:  # reported to the build as one EncodeError line
            message = str(exc).encode("utf-8")
            out.write(b"E" + HEADER.pack(len(message)) + message)
        out.flush()


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1]))

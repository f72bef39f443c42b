import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, write_jsonl


def run(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "search", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("command", [[], ["build"], ["query"], ["info"], ["serve"]])
def test_every_command_has_help(command):
    proc = run(*command, "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout


def test_query_json_finds_the_game_by_meaning(model_dir, demo_index):
    proc = run(
        "query",
        "--model",
        model_dir,
        "--index",
        demo_index,
        "--json",
        "-k",
        "5",
        "real-time strategy game in ancient times",
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    ids = [r["id"] for r in out["results"]]
    assert "0ad" in ids and len(ids) == 5
    assert {"id", "score", "title", "fields"} <= set(out["results"][0])


def test_query_table_with_filter_and_offset(model_dir, demo_index):
    proc = run(
        "query",
        "--model",
        model_dir,
        "--index",
        demo_index,
        "chess",
        "-k",
        "3",
        "--offset",
        "2",
        "--filter",
        "section=games",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].lstrip().startswith("3 ") and len(lines) == 4  # ranks 3..5 and a timing line


def test_info_describes_the_index(tiny_index):
    proc = run("info", "--index", tiny_index, "--verify")
    assert proc.returncode == 0, proc.stderr
    assert "1108 items" in proc.stdout and "field section: games (1108)" in proc.stdout
    assert "all sha256 checksums verified" in proc.stdout
    assert "int8 scan copy: scan-int8.npy" in proc.stdout  # float32 demo index: built with its scan copy
    assert "int4 prefilter copy: prefilter-int4.npy" in proc.stdout


def test_bad_corpus_exits_1_with_one_line(tmp_path, tiny_model_dir):
    model_dir = tiny_model_dir
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}])
    proc = run("build", "--corpus", corpus, "--model", model_dir, "--out", tmp_path / "i", "--quiet")
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"error: {corpus}:2: duplicate id 'a'"
    assert not (tmp_path / "i").exists()


def test_skip_bad_builds_and_counts(tmp_path, tiny_model_dir):
    model_dir = tiny_model_dir
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x"}, "{broken", {"id": "b", "text": "y"}])
    proc = run("build", "--corpus", corpus, "--model", model_dir, "--out", tmp_path / "i", "--skip-bad", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "2 items" in proc.stdout and "1 bad records skipped" in proc.stdout


def test_missing_index_and_bad_filter(tiny_model_dir, tiny_index, tmp_path):
    model_dir = tiny_model_dir
    proc = run("query", "--model", model_dir, "--index", tmp_path / "none", "x")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "index folder not found" in proc.stderr
    proc = run("query", "--model", model_dir, "--index", tmp_path / "none", "x", "--filter", "nonsense")
    assert proc.returncode == 2 and "expected FIELD=VALUE" in proc.stderr
    proc = run("query", "--model", model_dir, "--index", tiny_index, "x", "--filter", "colour=red")
    assert proc.returncode == 1 and "unknown filter field 'colour'" in proc.stderr


@pytest.mark.parametrize(
    "option, value, expected",
    [
        ("-k", "99999999999999999999", "from 1 to 10000"),  # overflowed SQLite: a traceback
        ("-k", "0", "from 1 to 10000"),
        ("--offset", "99999999999999999999", "from 0 to 1000000"),
        ("--offset", "-1", "from 0 to 1000000"),
    ],
)
def test_query_paging_out_of_range_is_one_usage_line(tiny_index, tmp_path, option, value, expected):
    proc = run("query", "--index", tiny_index, "x", option, value)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and expected in proc.stderr


def test_unknown_command_exits_2():
    proc = run("frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_build_without_scan_copy(tmp_path, tiny_model_dir):
    model_dir = tiny_model_dir
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"i{n}", "text": f"game number {n}"} for n in range(5)])
    proc = run("build", "--corpus", corpus, "--model", model_dir, "--out", tmp_path / "i", "--quiet", "--no-scan-copy")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
    assert manifest["scan"] is None and not any(n.startswith("scan-") for n in manifest["files"])


def run_bytes(*args, timeout=120):
    """Like run, with arguments as bytes (an argument need not be valid UTF-8)."""
    return subprocess.run(
        [sys.executable.encode(), b"-m", b"search", *args], cwd=ROOT, capture_output=True, timeout=timeout
    )


def one_line(proc, code, *needles):
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == code, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_serve_on_a_port_in_use_is_one_line():
    """Not uvicorn's start-up log and exit code 3."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        one_line(
            run("serve", "--host", "127.0.0.1", "--port", port, timeout=60), 1, f"cannot listen on 127.0.0.1:{port}: "
        )


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_serve_port_out_of_range_is_one_line(port):
    one_line(run("serve", "--port", port), 2, "argument --port: expected a port number from 0 to 65535")


@pytest.mark.parametrize("url", ["not a url", "ftp://host", "http://", "http://host:port"])
def test_upload_endpoint_url_that_is_not_a_url_is_one_line(url):
    proc = run("upload", "s3://bucket/prefix/", "--index", "build/index", "--endpoint-url", url, "--quiet")
    one_line(proc, 2, "argument --endpoint-url: expected an http:// or https:// URL")


def test_upload_endpoint_from_the_environment_is_checked_too():
    proc = subprocess.run(
        [sys.executable, "-m", "search", "upload", "s3://bucket/prefix/", "--index", "build/index", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**__import__("os").environ, "AWS_ENDPOINT_URL_S3": "not a url"},
    )
    one_line(proc, 1, "AWS_ENDPOINT_URL_S3: expected an http:// or https:// URL")


@pytest.mark.parametrize(
    "args",
    [
        [b"query", b"caf\xe9"],  # Latin-1, not UTF-8
        [b"info", b"--index", b"build/\xff\xfe"],
        [b"build", b"--corpus", b"\xc3(.jsonl"],
    ],
)
def test_an_argument_that_is_not_utf8_is_one_line(args):
    position = next(i for i, a in enumerate(args, start=1) if not _utf8(a))
    one_line(run_bytes(*args), 2, f"command-line argument {position} is not valid UTF-8")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_usage_errors_are_one_line():
    one_line(run("query"), 2, "the following arguments are required: text")
    one_line(run("frobnicate"), 2, "invalid choice")


@pytest.mark.parametrize(
    "args",
    [
        ["query", "--index", "build/index", "-k", "50", "strategy game"],
        ["query", "--index", "build/index", "--json", "-k", "50", "strategy game"],
        ["info", "--index", "build/index"],
    ],
)
def test_a_closed_stdout_ends_quietly(args, demo_index):
    """``search query ... | head``: the reader goes away before the output is written."""
    with subprocess.Popen(
        [sys.executable, "-m", "search", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        proc.stdout.close()  # before the process can write: its first write meets a closed pipe
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=120)
    assert code in (0, 141) and err == "", err


BAD_LINES = {
    "surrogate": (
        b'{"id": "b", "text": "\\ud800"}',
        "field 'text' holds an unpaired surrogate (an escape such as \\ud800), not valid text",
    ),
    "latin-1": (b'{"id": "b", "text": "caf\xe9"}', "not UTF-8 text (byte 25 of the line: invalid continuation byte)"),
    "too long": (
        b'{"id": "b", "text": "' + b"word " * 400 + b'"}',
        "record is 2,023 bytes, over the limit of 1,024 (--max-record-bytes)",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_corpus_line_is_one_line_with_its_number_or_skipped(tmp_path, tiny_model_dir, case):
    model_dir = tiny_model_dir
    line, problem = BAD_LINES[case]
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b'{"id": "a", "text": "chess"}\n' + line + b'\n{"id": "c", "text": "go"}\n')
    build = ["build", "--corpus", corpus, "--model", model_dir, "--quiet", "--max-record-bytes", "1K"]
    proc = run(*build, "--out", tmp_path / "i")
    assert proc.returncode == 1 and proc.stderr == f"error: {corpus}:2: {problem}\n"
    assert not (tmp_path / "i").exists()
    proc = run(*build, "--out", tmp_path / "i", "--skip-bad")
    assert proc.returncode == 0 and "2 items" in proc.stdout and "1 bad records skipped" in proc.stdout, proc.stderr


@pytest.mark.parametrize("size", ["lots", "0", "-5", "1T"])
def test_max_record_bytes_must_be_a_size(size):
    one_line(run("build", "--corpus", "c.jsonl", "--max-record-bytes", size), 2, "argument --max-record-bytes")


@pytest.mark.parametrize("score", ["nan", "inf", "-inf", "1.5", "-2", "high"])
def test_min_score_must_be_a_finite_number_from_minus_1_to_1(score):
    """As the HTTP API's min_score: nan compared false with every score, so it dropped them all."""
    proc = run("query", "chess", f"--min-score={score}")
    one_line(proc, 2, "argument --min-score: expected a number from -1 to 1")


def test_sigterm_during_a_build_removes_its_temp_folder(tmp_path, model_dir):
    """`timeout`, `docker stop` and schedulers send SIGTERM: it ends a build as Ctrl-C does, leaving
    neither the index nor its half-written `.<name>.tmp-*` folder."""
    from tests.conftest import DEMO_CORPUS

    command = [sys.executable, "-m", "search", "build", "--corpus", str(DEMO_CORPUS), "--model", str(model_dir)]
    with subprocess.Popen(
        [*command, "--out", str(tmp_path / "index"), "--threads", "1"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # progress: 1,108 texts take seconds to embed after this line
            if line.startswith("embedding: "):
                break
        proc.terminate()
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 143, rest
    assert rest.splitlines()[-1] == "terminated", rest
    assert os.listdir(tmp_path) == []


def test_threads_takes_auto_as_its_error_message_says(demo_index):
    """`--threads -3` answers "from 1 to 64 or auto"; `--threads auto` then has to work.  A build starts
    one embedding process a thread, so `--threads 100000` is refused as `--workers 100000` is."""
    for bad in ("-3", "65", "100000"):
        one_line(
            run("query", "chess", "--threads", bad), 2, "argument --threads: expected a number from 1 to 64 or auto"
        )
    proc = run("query", "chess", "-k", "1", "--threads", "auto", "--index", demo_index)
    assert proc.returncode == 0 and "1  " in proc.stdout, proc.stderr


@pytest.mark.parametrize("workers", ["0", "-1", "65", "100000", "two"])
def test_serve_workers_is_bounded(workers):
    """`--workers 100000` forked until a shared 2-core machine reached load 386; 0 and -1 served anyway."""
    one_line(run("serve", f"--workers={workers}", timeout=60), 2, "argument --workers: expected a number from 1 to 64")

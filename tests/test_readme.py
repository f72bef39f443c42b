"""The examples in README.md and docs/*.md that are marked ``<!-- example -->`` are run and their
output compared with what the page shows, so no shown output is written by hand.

A marked example is the fenced block right after the marker.  Its lines starting with ``$ `` are
commands (a trailing backslash continues one); the lines after a command, up to the next, are its
output.  Commands:

* ``curl -s [-X METHOD] [-H header] [-d body] 'http://127.0.0.1:8000/...' [| python -m json.tool]``
  is answered in-process by the app (FastAPI TestClient) over the demo index, as ``make serve``
  serves it;
* anything else runs in a shell from the repository root, with no ``SEARCH_*`` variables set.

Times, request ids and rates change from run to run; they are masked on both sides before the
comparison.  After a change that moves real output (a new model, index or API field):

    python tests/test_readme.py --write     # runs every example, rewrites the shown output
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "<!-- example -->"
BASE_URL = "http://127.0.0.1:8000"
TIMING_KEYS = "queue|embed|search|keyword|keyword_wait|fetch|total|load|refresh|page_in|open|s3_client|verify"
MASKS = [
    (re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?"), "#"),  # build times
    (re.compile(rf'("(?:{TIMING_KEYS})"\s*:\s*)-?[0-9.e-]+'), r"\1#"),  # timing_ms / timings_ms values
    (re.compile(r'("request_id"\s*:\s*)"[^"]*"'), r'\1"#"'),
    (re.compile(r"\b\d+(?:\.\d+)?(?= ?(?:ms|s|MB/s|records/s|docs/s|MB)\b)"), "#"),  # durations, rates
    (re.compile(r"(x-request-id: )\S+"), r"\1#"),
]


@dataclass
class Example:
    page: Path
    line: int  # 1-based line of the first command
    start: int  # index of the block's first content line in the page's lines
    end: int  # index of the closing fence
    commands: list[tuple[str, list[str]]]  # (command, shown output lines)

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def find_examples(page: Path) -> list[Example]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise AssertionError(f"{page}:{i + 1}: {MARKER} must come right before a fenced block")
        start = i + 2
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        commands: list[tuple[str, list[str]]] = []
        j = start
        while j < end:
            if not lines[j].startswith("$ "):
                raise AssertionError(f"{page}:{j + 1}: an example starts with a `$ ` command")
            command = lines[j][2:]
            while command.endswith("\\") and j + 1 < end:
                j += 1
                command = command[:-1] + " " + lines[j].strip()
            j += 1
            output = []
            while j < end and not lines[j].startswith("$ "):
                output.append(lines[j])
                j += 1
            commands.append((command, output))
        found.append(Example(page, start + 1, start, end, commands))
    return found


EXAMPLES = [e for page in PAGES for e in find_examples(page)]


def mask(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


class Runner:
    """Runs commands; the in-process app is made on first use."""

    def __init__(self, model_dir: Path, index_dir: Path, cache_dir: Path):
        self.model_dir, self.index_dir, self.cache_dir = model_dir, index_dir, cache_dir
        self._client = None

    def client(self):
        if self._client is None:
            from fastapi.testclient import TestClient

            from search.serve.app import create_app
            from search.settings import Settings

            settings = Settings.resolve(
                env={},
                model_dir=str(self.model_dir),
                index_uri=str(self.index_dir),
                cache_dir=str(self.cache_dir),
                refresh_seconds=0,
                page_in=False,
            )
            app = create_app(settings)
            self._client = TestClient(app, raise_server_exceptions=False)
            app.state.runtime.load()
        return self._client

    def run(self, command: str) -> str:
        if command.startswith("curl "):
            return self.curl(command)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEARCH_")}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `python` is this one
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        return done.stdout + done.stderr

    def curl(self, command: str) -> str:
        pipe_json = command.endswith("| python -m json.tool")
        words = shlex.split(command.removesuffix("| python -m json.tool"))
        method, headers, body, url, include = "GET", {}, None, None, False
        i = 1
        while i < len(words):
            word = words[i]
            if word in ("-X", "--request"):
                method, i = words[i + 1], i + 2
            elif word in ("-H", "--header"):
                key, _, value = words[i + 1].partition(":")
                headers[key.strip()], i = value.strip(), i + 2
            elif word in ("-d", "--data"):
                body, i = words[i + 1], i + 2
                method = "POST" if method == "GET" else method
            elif word.startswith("-"):
                include = include or "i" in word.lstrip("-")
                i += 1
            else:
                url, i = word, i + 1
        assert url and url.startswith(BASE_URL), f"an example's curl goes to {BASE_URL}: {command}"
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        response = self.client().request(method, path, headers=headers, content=body)
        text = json.dumps(response.json(), indent=4, ensure_ascii=False) if pipe_json else response.text
        if include:
            head = [f"HTTP/1.1 {response.status_code} {response.reason_phrase}"]
            head += [f"{k}: {v}" for k, v in response.headers.items() if k != "server-timing"]
            text = "\n".join(head) + "\n\n" + text
        return text


@pytest.fixture(scope="module")
def runner(model_dir, demo_index, tmp_path_factory):
    return Runner(model_dir, demo_index, tmp_path_factory.mktemp("readme-cache"))


def test_configuration_lists_every_setting():
    """docs/configuration.md names every environment variable search/settings.py reads."""
    from search.settings import SPEC

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = sorted(env for env, _, _ in SPEC.values() if f"`{env}`" not in page)
    assert not missing, f"docs/configuration.md does not describe {missing}"


def test_links_between_pages_resolve():
    """Every relative link in the README, the changelog and docs/ names a file that exists."""
    pages = [*PAGES, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs" / "decisions").glob("*.md"))]
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in pages
        for target in re.findall(r"\]\(([^)\s#]+)[^)]*\)", page.read_text(encoding="utf-8"))
        if not target.startswith(("http://", "https://", "mailto:")) and not (page.parent / target).exists()
    ]
    assert not broken, broken


def test_pages_have_examples():
    assert any(e.page.name == "README.md" for e in EXAMPLES), "README.md has no marked example"


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.name)
def test_example_output_is_what_the_page_shows(example, runner):
    for command, shown in example.commands:
        actual = runner.run(command)
        assert mask(actual) == mask("\n".join(shown)), (
            f"{example.name}: `{command}` no longer prints what the page shows; "
            "run `python tests/test_readme.py --write` and review the diff\n--- shown\n"
            + "\n".join(shown)
            + "\n--- actual\n"
            + actual
        )


def write_all() -> int:
    import tempfile

    runner = Runner(ROOT / "build" / "model", ROOT / "build" / "index", Path(tempfile.mkdtemp(prefix="readme-")))
    changed = 0
    for page in PAGES:
        examples = find_examples(page)
        if not examples:
            continue
        lines = page.read_text(encoding="utf-8").splitlines()
        for example in reversed(examples):  # from the bottom: earlier line numbers stay valid
            block = []
            for command, _ in example.commands:
                block.extend(_wrap(command))
                block.extend(runner.run(command).rstrip("\n").splitlines())
            if lines[example.start : example.end] != block:
                lines[example.start : example.end] = block
                changed += 1
        page.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{changed} example(s) rewritten")
    return 0


def _wrap(command: str) -> list[str]:
    """A command as shown: long shell commands keep the page's backslash continuations."""
    return [f"$ {command}"]


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        print("usage: python tests/test_readme.py --write", file=sys.stderr)
        sys.exit(2)
    sys.exit(write_all())

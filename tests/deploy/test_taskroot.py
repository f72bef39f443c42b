"""deploy/taskroot.py, the one recipe for /var/task: its files list and the distribution pruning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_files_list_errors_name_the_line(tmp_path):
    from deploy import taskroot

    listed = taskroot.code_paths()
    assert "handler.py" in listed and "search" in listed
    bad = tmp_path / "files.txt"
    bad.write_text("# comment\nhandler.py\nno/such/module.py\n")
    with pytest.raises(taskroot.RecipeError, match=r"files.txt:3: 'no/such/module.py' does not exist"):
        taskroot.code_paths(bad)
    bad.write_text("../outside.py\n")
    with pytest.raises(taskroot.RecipeError, match=r"files.txt:1: .* inside the repo"):
        taskroot.code_paths(bad)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "deploy" / "taskroot.py"),
            "data",
            "--target",
            str(tmp_path / "t"),
            "--model",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "manifest.json missing" in done.stderr, done.stderr


def test_dropping_a_distribution_keeps_what_others_need():
    from deploy import taskroot

    dists = {
        "tokenizers": {"requires": ["huggingface-hub"]},
        "huggingface-hub": {"requires": ["tqdm", "packaging", "pyyaml"]},
        "onnxruntime": {"requires": ["packaging", "numpy"]},
        "tqdm": {"requires": []},
        "packaging": {"requires": []},
        "pyyaml": {"requires": []},
        "numpy": {"requires": []},
    }
    dropped = taskroot.droppable(dists, {"huggingface-hub"}, wanted={"tokenizers", "onnxruntime", "pyyaml"})
    assert dropped == {"huggingface-hub", "tqdm"}  # packaging: onnxruntime needs it; pyyaml: asked for

#!/usr/bin/env python3
"""Export a sentence-transformers model to an ONNX model bundle for ``search.model.encoder``.

    python export_onnx.py --out build/model

Loads the PyTorch model, traces it to ONNX, rewrites and quantises the graph, writes the bundle
(model.onnx, tokenizer.json, manifest.json) and publishes it only if its vectors pass the quality
gate against PyTorch.  The code is the ``export`` package (``export/cli.py`` ties the steps).

Exit codes: 0 published, 1 the quality gate failed, 2 bad input.
"""

import sys

from export.cli import main

if __name__ == "__main__":
    sys.exit(main())

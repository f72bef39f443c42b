"""The model export: a sentence-transformers model -> a verified ONNX bundle for ``search.model``.

``export_onnx.py`` at the top of the repository is the command; this package is its code, one
stage a module, in the order the model travels:

* ``source``   - find the model (the packaged all-MiniLM-L6-v2, a folder or a hub id), read how
  sentence-transformers pools it, load it in PyTorch and trace it to ONNX;
* ``graph``    - shape-free rewrites of the traced graph (constant reshapes, a plain mask,
  merged query/key/value projections), each kept only if the outputs do not move;
* ``quantize`` - the int8 weights;
* ``bundle``   - the tokenizer, the manifest and the atomic publish;
* ``gate``     - the quality gate: the bundle's vectors, through the shipped encoder, against
  PyTorch fp32;
* ``cli``      - the arguments and the run that ties the stages together.

Only this package imports torch and transformers; the run time (``search/``) never does.
"""

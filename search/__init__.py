"""Serverless semantic search: ONNX sentence embeddings over a memory-mapped exact index."""

__version__ = "0.1.0"

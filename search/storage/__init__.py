"""Where an index lives: S3 download and upload, the live (hot-swapped) index."""

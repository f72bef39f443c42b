"""The model bundle and the encoder: text -> unit vector."""

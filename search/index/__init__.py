"""The index folder: corpus in, format, builder, reader, metadata, keyword index."""

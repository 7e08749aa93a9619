"""Data sets: metadata checks, readers, image decoding, streaming and shards, generated worlds. No Kedro."""

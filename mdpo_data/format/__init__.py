"""The on-disk format: shard schema, shard files, manifest, stage markers, folder ownership, integrity."""

"""The build stage: sampling, per-example work (images, rejected images, system prompts), shards."""

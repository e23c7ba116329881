"""The soft-target shards: schema, writer and manifest (shards), the streaming reader (reader),
and whole-set operations: verify, summary, copy (shardset)."""

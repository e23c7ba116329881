"""Files and places: atomic writes, failpoints for fault injection, storage locations (local
directories or URIs).

The lowest layer after `kd.errors`: everything may import it, it imports nothing else of `kd`.
"""

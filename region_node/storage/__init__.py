"""The node's bytes on its filesystem: the content-addressed chunk store (pack files), the
servers' disk files, the reserved room, and file I/O that writes all or raises. Nothing here
knows a backup from a replica: the rules of what keeps a chunk alive are in chunk_store."""

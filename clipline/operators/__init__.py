"""Per-batch transforms on Arrow tables: one class per file, a setup() once, a __call__ per batch; no Ray."""

"""The Ray Data run: stages, plan, sink, ledger, dedup, run modes, and the Ray-free run summary."""

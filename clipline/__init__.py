"""clipline: batch CLIP embedding and zero-shot moderation with Ray Data, open_clip and LanceDB.

Where things live, in the order data flows (a room imports only rooms listed before it):

- `schemas/`    the job config and policy (pydantic), the output table's Arrow schema, status,
                decision and error-code enums. Imports nothing of ours.
- `operators/`  per-batch transforms on Arrow tables, one per file, all following the stage
                contract in `operators/base.py`: read, decode, encode, classify. No Ray, no table I/O.
- `models/`     open_clip loading (hub tag, checkpoint, bundled tiny CLIP), the prompt cache, the
                zero-shot maths.
- `table/`      `store.py`, the one way into a clipline table (open/create, its model, rows by id,
                SQL literals, the `_clipline/` sidecar paths, staged one-commit merges); search,
                upkeep (indexes, compaction) and curated exports.
- `pipelines/`  the Ray Data run and nothing else: the stage list, the plan, the sink, the ledger of
                input files, dedup, the run modes, and a Ray-free run summary.
- `moderation/` calibrate thresholds, rescore from stored embeddings, trained heads, human review.
- `reports/`    run manifests and the HTML report (read the run summary, never the run).
- `demo/`       the shapes world, the tiny CLIP's trainer and bundled weights, `clipline demo`.
- `serve/`      `clipline serve`: the web page and JSON API (search, review queue, run history).
- `jobs/`       the CLI verbs and `python -m clipline.jobs.run` for `ray job submit`.
"""

__version__ = "0.1.0"

"""Moderation verbs on an existing table: `calibrate`, `rescore`, `train-head`, `review export|apply`.

Each verb is argument parsing over one function in `clipline.moderation`; user errors (missing
files, bad labels, unknown ids, a policy that does not validate) print one `error:` message and
exit 2, never a traceback.
"""

from __future__ import annotations

import argparse

from clipline.jobs.output import Report, emit
from clipline.jobs.table_args import add_table_arguments, storage_from_args, user_errors


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value


def format_export(summary: dict) -> str:
    lines = [
        f"review queue: {summary['rows']} rows → {summary['path']}",
        f"  thumbnails   {summary['thumbnails_written']} written, {summary['thumbnails_from_uri']} from image_uri",
    ]
    lines += [f"  no thumbnail {count}: {reason}" for reason, count in summary["thumbnail_failures"].items()]
    lines.append("fill in override_decision (allow / review / block / clear), then: clipline review apply")
    return "\n".join(lines)


def format_apply(summary: dict) -> str:
    decided = ", ".join(f"{key}: {value}" for key, value in summary["by_decision"].items()) or "-"
    return (
        f"applied {summary['applied']} reviewer decisions ({decided}); cleared {summary['cleared']}\n"
        f"table version {summary['table_version']}"
    )


@user_errors()
def cmd_calibrate(args: argparse.Namespace) -> int:
    from clipline.moderation.calibrate import calibrate, format_report

    report = calibrate(
        args.db,
        args.table,
        args.labels,
        args.policy,
        args.out,
        target_precision=args.target_precision,
        target_recall=args.target_recall,
        holdout=args.holdout,
        min_labels=args.min_labels,
        version=args.version,
        report_dir=args.report_dir,
        storage=storage_from_args(args),
    )
    return emit(Report(report, format_report), args.json)


@user_errors()
def cmd_rescore(args: argparse.Namespace) -> int:
    from clipline.moderation.rescore import rescore

    return emit(rescore(args.db, args.table, args.policy, storage_from_args(args), args.dry_run), args.json)


@user_errors()
def cmd_train_head(args: argparse.Namespace) -> int:
    from clipline.moderation.heads import format_report, train_heads

    report = train_heads(
        args.db,
        args.table,
        args.labels,
        args.policy,
        args.out,
        out_policy=args.out_policy,
        holdout=args.holdout,
        l2=args.l2,
        min_gain=args.min_gain,
        min_labels=args.min_labels,
        storage=storage_from_args(args),
    )
    return emit(Report(report, format_report), args.json)


@user_errors()
def cmd_review_export(args: argparse.Namespace) -> int:
    from clipline.moderation.review import export_queue

    summary = export_queue(
        args.db,
        args.table,
        args.out,
        where=args.where,
        limit=args.limit,
        thumbnails=not args.no_thumbnails,
        image_column=args.image_column,
        storage=storage_from_args(args),
    )
    return emit(Report(summary, format_export), args.json)


@user_errors()
def cmd_review_apply(args: argparse.Namespace) -> int:
    from clipline.moderation.review import apply_decisions

    summary = apply_decisions(args.db, args.table, args.decisions, args.reviewer, storage_from_args(args))
    return emit(Report(summary, format_apply), args.json)


def register(verbs: argparse._SubParsersAction) -> None:
    calibrate = verbs.add_parser(
        "calibrate", help="pick policy thresholds from labelled rows (stored embeddings; PR curves, report)"
    )
    add_table_arguments(calibrate)
    calibrate.add_argument("--labels", required=True, help="parquet or CSV with columns id, category, label (0/1)")
    calibrate.add_argument("--policy", required=True, help="policy YAML to calibrate")
    calibrate.add_argument("--out", required=True, help="calibrated policy YAML to write")
    calibrate.add_argument("--target-precision", type=fraction, default=0.95, help="block threshold's precision")
    calibrate.add_argument("--target-recall", type=fraction, default=0.9, help="review threshold's recall")
    calibrate.add_argument("--holdout", type=fraction, default=0.25, help="fraction of labels held out to evaluate")
    calibrate.add_argument("--min-labels", type=int, default=20, help="minimum positives and negatives per category")
    calibrate.add_argument("--version", default=None, help="version of the new policy (default: derived)")
    calibrate.add_argument("--report-dir", default=None, help="where report.json and PR PNGs go (default: by --out)")
    calibrate.add_argument("--json", action="store_true", help="print the report as JSON")
    calibrate.set_defaults(handler=cmd_calibrate)

    rescore = verbs.add_parser("rescore", help="re-apply a policy to every row from stored embeddings (in place)")
    add_table_arguments(rescore)
    rescore.add_argument("--policy", required=True, help="policy YAML")
    rescore.add_argument("--dry-run", action="store_true", help="count what would change, write nothing")
    rescore.add_argument("--json", action="store_true", help="print the summary as JSON")
    rescore.set_defaults(handler=cmd_rescore)

    head = verbs.add_parser("train-head", help="fit a linear (logistic) head per labelled category")
    add_table_arguments(head)
    head.add_argument("--labels", required=True, help="parquet or CSV with columns id, category, label (0/1)")
    head.add_argument("--policy", required=True, help="policy whose prompts the heads are compared with")
    head.add_argument("--out", required=True, help="heads JSON to write")
    head.add_argument("--out-policy", default=None, help="also write the policy using the heads that won")
    head.add_argument("--holdout", type=fraction, default=0.25, help="fraction of labels held out to compare")
    head.add_argument("--l2", type=float, default=1e-3, help="L2 regularisation strength")
    head.add_argument("--min-gain", type=float, default=0.01, help="held-out AP a head must gain to replace prompts")
    head.add_argument("--min-labels", type=int, default=20, help="minimum positives and negatives per category")
    head.add_argument("--json", action="store_true", help="print the report as JSON")
    head.set_defaults(handler=cmd_train_head)

    review = verbs.add_parser("review", help="human review: export the queue, apply reviewer decisions")
    actions = review.add_subparsers(dest="review_verb", required=True, metavar="ACTION")
    export = actions.add_parser("export", help="write the review queue as CSV (with thumbnails)")
    add_table_arguments(export)
    export.add_argument("--out", required=True, help="queue CSV to write; thumbnails go to <name>-thumbs/")
    export.add_argument("--where", default=None, help='extra SQL filter, e.g. "labels IS NOT NULL"')
    export.add_argument("--limit", type=int, default=None, help="at most this many rows (highest scores first)")
    export.add_argument("--no-thumbnails", action="store_true", help="do not re-read images for thumbnails")
    export.add_argument("--image-column", default="image", help="image bytes column of the input parquet")
    export.add_argument("--json", action="store_true", help="print the summary as JSON")
    export.set_defaults(handler=cmd_review_export)
    apply = actions.add_parser("apply", help="write reviewer decisions (CSV: id, override_decision) to the table")
    add_table_arguments(apply)
    apply.add_argument("decisions", help="CSV with id, override_decision[, override_by, override_note]")
    apply.add_argument("--reviewer", default=None, help="who decided (unless the CSV has override_by)")
    apply.add_argument("--json", action="store_true", help="print the summary as JSON")
    apply.set_defaults(handler=cmd_review_apply)

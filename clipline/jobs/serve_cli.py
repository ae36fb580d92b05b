"""`clipline serve`: the web page and JSON API over one table (search, review queue, run history)."""

from __future__ import annotations

import argparse

from clipline.jobs.table_args import add_table_arguments, storage_from_args, user_errors


@user_errors()
def cmd_serve(args: argparse.Namespace) -> int:
    from clipline.serve.server import serve
    from clipline.serve.settings import ServeSettings, load_tokens

    options = {"reviewer": args.reviewer} if args.reviewer else {}
    settings = ServeSettings(
        db=args.db,
        table=args.table,
        host=args.host,
        port=args.port,
        auth=args.auth,
        tokens=load_tokens(args.token_file) if args.auth == "token" else {},
        reviewer_header=args.reviewer_header,
        lease_s=args.lease_minutes * 60,
        page_size=args.page_size,
        storage=storage_from_args(args),
        **options,
    )
    settings.check()  # before the model loads: a refused bind says so at once
    serve(settings)
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    serve = verbs.add_parser("serve", help="web page and JSON API: search, the review queue, run history")
    add_table_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback; others need --auth)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--auth", choices=["none", "token"], default="none", help="token: every request needs one")
    serve.add_argument("--token-file", default=None, help="`name:token` per line (else CLIPLINE_SERVE_TOKENS)")
    serve.add_argument(
        "--reviewer-header", default=None, help="take the reviewer's name from this header, set by a trusted proxy"
    )
    serve.add_argument("--reviewer", default=None, help="reviewer name without auth (default: the OS user)")
    serve.add_argument("--lease-minutes", type=float, default=15.0, help="how long a queue page stays leased")
    serve.add_argument("--page-size", type=int, default=24, help="rows per review-queue page")
    serve.set_defaults(handler=cmd_serve)

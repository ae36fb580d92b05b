"""The `clipline` command: thin argument parsing over the library; no logic of its own.

Verb modules import only argparse-level code at the top; torch, open_clip, Ray and LanceDB are
imported inside the handler of the verb that needs them, so `clipline --help` starts at once.
"""

from __future__ import annotations

import argparse
import sys

from clipline.jobs import moderation_cli, report_cli, search_cli, serve_cli, table_cli
from clipline.jobs.output import emit
from clipline.jobs.run import add_run_arguments, options_from_args, run_from_file

# Verbs that work on an existing table live in their own modules, each with `register(verbs)`.
VERB_MODULES = (search_cli, report_cli, moderation_cli, table_cli, serve_cli)


def cmd_run(args: argparse.Namespace) -> int:
    return run_from_file(args.config, options_from_args(args), args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from clipline.demo.demo import run_demo

    summary = run_demo(args.out, address=args.address)
    emit(summary, as_json=False)
    table = f"--db {summary.table_uri} --table {summary.table}"
    print(f"\nsearch it:  clipline search {table} --text 'a red star'")
    print(f"browse and review it:  clipline serve {table}    (then open http://127.0.0.1:8000/)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipline", description="CLIP embedding and moderation into LanceDB")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    run = verbs.add_parser("run", help="run a job config (validated before Ray starts)")
    run.add_argument("config", help="job YAML")
    add_run_arguments(run)
    run.set_defaults(handler=cmd_run)

    demo = verbs.add_parser("demo", help="generate demo data and run the pipeline on it with the tiny CLIP")
    demo.add_argument("--out", default="./clipline-demo", help="directory for data and the LanceDB table")
    demo.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    demo.set_defaults(handler=cmd_demo)

    for module in VERB_MODULES:
        module.register(verbs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

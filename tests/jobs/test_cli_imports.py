"""`clipline --help` and every `clipline <verb> --help` start without the heavy libraries.

The time and memory are measured by `benchmarks/cli_startup.py` (README "The CLI"); this test holds
the cause: which modules get imported. A verb imports torch, open_clip, Ray, LanceDB, pandas,
matplotlib, FastAPI or uvicorn inside its handler, when it runs, never to build its parser.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "open_clip", "ray", "lancedb", "pandas", "matplotlib", "fastapi", "uvicorn", "pyarrow", "numpy")
PROBE = """
import contextlib, io, json, sys
from clipline.jobs.cli import build_parser, main

def heavy():
    return sorted(name for name in sys.modules if name.split(".")[0] in HEAVY)

verbs = [[]] + [[name] for name in build_parser()._subparsers._group_actions[0].choices]
verbs += [["review", "export"], ["review", "apply"]]
found = {}
for verb in verbs:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*verb, "--help"])
    found[" ".join(verb) or "(none)"] = heavy()
print(json.dumps(found))
"""


def test_help_of_every_verb_imports_none_of_the_heavy_libraries():
    probe = f"HEAVY = {HEAVY!r}\n{PROBE}"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout)
    assert {"(none)", "run", "search", "serve", "review apply", "curate"} <= set(found)
    assert {verb: modules for verb, modules in found.items() if modules} == {}

"""Latency of `clipline serve` over HTTP: a text query against the demo table, as a browser or script waits.

    python -m benchmarks.serve_latency [--out DIR] [--arch ViT-B-32 --pretrained none] [--requests 200]

Builds the demo table in DIR with the given model when it is not there yet (the demo's input and
policy through the real pipeline, on a local Ray), starts `clipline serve` as its own process on a
free loopback port, and times requests on one keep-alive connection after a warm-up: the JSON API
without and with a filter, and the search page (HTML with the result thumbnails inlined). Each
request uses the next of a few different queries, so no answer is cached anywhere.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

QUERIES = [
    "a red star",
    "a photo of a blue circle.",
    "a green square on a noisy background",
    "a yellow heart",
    "a ring",
]
CASES = {
    "api, text query, k=24": ("/api/search", {"k": 24}),
    "api, text query + decision filter, k=24": ("/api/search", {"k": 24, "decision": "block"}),
    "page, text query, k=24 (HTML, thumbnails inline)": ("/", {"k": 24}),
}


def build_table(out: Path, arch: str, pretrained: str | None) -> None:
    """The demo input and policy through the real pipeline, with the chosen model."""
    from clipline.demo.demo import DEMO_POLICY, write_demo_input
    from clipline.pipelines.run import run_job
    from clipline.pipelines.summary import RunOptions
    from clipline.reports import record_run
    from clipline.schemas.config import JobConfig

    source = write_demo_input(out)
    config = JobConfig.model_validate(
        {
            "source": {"paths": [str(source)]},
            "model": {"arch": arch, **({"pretrained": pretrained} if pretrained else {})},
            "policy": str(DEMO_POLICY),
            "sink": {"uri": str(out), "table": "media"},
        }
    )
    record_run(run_job(config, RunOptions(full=True)), config)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(db: Path, table: str, port: int, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "clipline.jobs.cli",
        "serve",
        "--db",
        str(db),
        "--table",
        table,
        "--port",
        str(port),
    ]
    with log.open("w") as handle:  # the access log goes to a file: a pipe nobody reads would fill and block
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"clipline serve exited: {log.read_text()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise TimeoutError("clipline serve did not answer")


def time_requests(port: int, path: str, params: dict, requests: int, warm_up: int = 10) -> list[float]:
    """Milliseconds per request (send to last byte read), one keep-alive connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for index in range(warm_up + requests):
        query = urlencode({**params, "q": QUERIES[index % len(QUERIES)]})
        started = time.perf_counter()
        connection.request("GET", f"{path}?{query}")
        response = connection.getresponse()
        body = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"{path}: HTTP {response.status}: {body[:300]!r}")
        if index >= warm_up:
            times.append(elapsed)
    connection.close()
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serve_latency", description=__doc__)
    parser.add_argument("--out", default="benchmarks/results/serve", help="directory of the demo table")
    parser.add_argument("--arch", default="clipline-tiny")
    parser.add_argument("--pretrained", default=None, help="e.g. none: random weights")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args(argv)
    out = Path(args.out) / f"{args.arch}-{args.pretrained or 'bundled'}"
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "media.lance").exists():
        build_table(out, args.arch, args.pretrained)
    port = free_port()
    server = start_server(out, "media", port, out / "serve.log")
    try:
        results = {}
        for name, (path, params) in CASES.items():
            times = time_requests(port, path, params, args.requests)
            results[name] = {
                "p50_ms": round(statistics.median(times), 2),
                "p90_ms": round(percentile(times, 0.9), 2),
                "p99_ms": round(percentile(times, 0.99), 2),
                "mean_ms": round(statistics.fmean(times), 2),
            }
    finally:
        server.terminate()
        server.wait(timeout=30)
    report = {"model": f"{args.arch}/{args.pretrained or 'bundled'}", "requests": args.requests, "cpus": os.cpu_count()}
    report["latency"] = results
    (out / "serve_latency.json").write_text(json.dumps(report, indent=2))
    print(f"clipline serve, demo table, {report['model']}, {args.requests} requests each (after 10 warm-up)")
    for name, figures in results.items():
        spread = f"p90 {figures['p90_ms']:7.2f}   p99 {figures['p99_ms']:7.2f}"
        print(f"  {name:<50} p50 {figures['p50_ms']:7.2f} ms   {spread}")
    return report


if __name__ == "__main__":
    main()

"""Run the app under uvicorn: one process, the table and the model opened once at start."""

from __future__ import annotations

import uvicorn

from clipline.serve.app import create_app
from clipline.serve.settings import ServeSettings


def serve(settings: ServeSettings) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM: uvicorn finishes the requests in flight)."""
    app = create_app(settings)
    where = f"http://{settings.host}:{settings.port}/"
    print(f"clipline serve: table {settings.table!r} in {settings.db}, auth {settings.auth}; loading the model…")
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info", server_header=False)
    server = uvicorn.Server(config)
    print(f"open {where} (search), {where}queue (review), {where}docs (API)", flush=True)
    server.run()

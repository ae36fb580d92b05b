"""How `clipline serve` is configured, and the access rules checked before it binds a socket.

- It binds to loopback by default. Any other address requires `--auth token`: a page that
  writes reviewer decisions into the table must not be open to whoever can reach the port.
- Tokens come from a file (`--token-file`) or the `CLIPLINE_SERVE_TOKENS` environment variable,
  never from the command line (where `ps` shows them). Both hold `name:token` entries, one per
  line (or comma-separated in the variable); the name is the reviewer a token decides as.
- Behind a trusted proxy that authenticates people, `--reviewer-header X-Forwarded-User` takes
  the reviewer's name from that header instead. The proxy must set it on every request and strip
  it from what clients send; clipline cannot tell a forged header from a real one.
"""

from __future__ import annotations

import getpass
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from clipline.schemas.storage import StorageConfig

TOKENS_ENV = "CLIPLINE_SERVE_TOKENS"
MIN_TOKEN_CHARS = 16
AUTH_MODES = ("none", "token")


class ServeConfigError(ValueError):
    """The server cannot start as asked (an open bind without auth, no usable tokens)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_tokens(text: str, where: str) -> dict[str, str]:
    """`name:token` entries (lines or commas; `#` comments) → {token: reviewer name}."""
    tokens: dict[str, str] = {}
    for number, entry in enumerate(text.replace(",", "\n").splitlines(), start=1):
        entry = entry.split("#", 1)[0].strip()
        if not entry:
            continue
        name, separator, token = (part.strip() for part in entry.partition(":"))
        if not separator or not name or not token:
            raise ServeConfigError(f"{where}, entry {number}: expected `name:token`")
        if len(token) < MIN_TOKEN_CHARS:
            raise ServeConfigError(
                f"{where}, entry {number}: the token of {name!r} is shorter than {MIN_TOKEN_CHARS} characters"
            )
        if token in tokens:
            raise ServeConfigError(f"{where}, entry {number}: {name!r} reuses the token of {tokens[token]!r}")
        tokens[token] = name
    return tokens


def load_tokens(token_file: str | None) -> dict[str, str]:
    """Tokens from `--token-file`, else from CLIPLINE_SERVE_TOKENS; at least one."""
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise ServeConfigError(f"--token-file {token_file}: no such file")
        tokens = parse_tokens(path.read_text(), f"--token-file {token_file}")
    elif os.environ.get(TOKENS_ENV):
        tokens = parse_tokens(os.environ[TOKENS_ENV], TOKENS_ENV)
    else:
        raise ServeConfigError(f"--auth token needs --token-file or the {TOKENS_ENV} environment variable")
    if not tokens:
        raise ServeConfigError("--auth token: no tokens given")
    return tokens


@dataclass(frozen=True)
class ServeSettings:
    """Everything `create_app` needs."""

    db: str
    table: str
    host: str = "127.0.0.1"
    port: int = 8000
    auth: str = "none"
    tokens: dict[str, str] = field(default_factory=dict)  # token → reviewer name
    reviewer_header: str | None = None
    reviewer: str = field(default_factory=getpass.getuser)  # who decides when nothing else says
    lease_s: float = 15 * 60
    page_size: int = 24
    storage: StorageConfig = field(default_factory=StorageConfig)

    def check(self) -> None:
        """Refuse what would expose the decision endpoints: an open bind without tokens."""
        if self.auth not in AUTH_MODES:
            raise ServeConfigError(f"--auth {self.auth!r} is not one of {AUTH_MODES}")
        if self.auth == "token" and not self.tokens:
            raise ServeConfigError("--auth token: no tokens given")
        if not is_loopback(self.host) and self.auth != "token":
            raise ServeConfigError(
                f"--host {self.host} is reachable from other machines: add --auth token "
                f"(tokens from --token-file or {TOKENS_ENV}), or bind to 127.0.0.1"
            )
        if self.page_size < 1:
            raise ServeConfigError("--page-size must be at least 1")

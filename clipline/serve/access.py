"""Who is asking, and whether a request that changes something really comes from our own page.

Identity (`identify`): with `--auth token`, a request carries a token as `Authorization: Bearer`
(scripts, the API) or in the HttpOnly cookie the login form sets (browsers); anything else is
refused (401, or the login page for a browser). The reviewer is the token's name, or the trusted
proxy's header (`--reviewer-header`), or, on loopback without auth, `--reviewer`.

Cross-site request forgery: a page on another site can make the reviewer's browser post to this
server (and the browser attaches cookies). Every unsafe request (POST) must therefore carry
`X-CSRF-Token`, an HMAC of the browser's session cookie under a per-process secret, which only our
own pages know (they embed it); browsers never send custom headers cross-site without a CORS
preflight, which this server does not answer. A request authenticated by an `Authorization`
header is exempt: no browser adds that header on its own. Posts whose `Origin` is another site are
refused outright, the login form included.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from clipline.serve.settings import ServeSettings

TOKEN_COOKIE = "clipline_token"
SESSION_COOKIE = "clipline_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


class Refused(Exception):
    """The request may not proceed; `status` 401 (who are you?) or 403 (not like this)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Identity:
    reviewer: str
    by_header: bool  # authenticated by an Authorization header: not forgeable cross-site


class Access:
    """The access rules of one server process (its CSRF secret lives and dies with it)."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.secret = secrets.token_bytes(32)

    def csrf_token(self, session: str) -> str:
        return hmac.new(self.secret, session.encode(), hashlib.sha256).hexdigest()

    def _token_name(self, presented: str) -> str | None:
        """The reviewer name of a valid token (compared in constant time against every token)."""
        found = None
        for token, name in self.settings.tokens.items():
            if hmac.compare_digest(token.encode(), presented.encode()):
                found = name
        return found

    def login(self, presented: str) -> str:
        name = self._token_name(presented)
        if name is None:
            raise Refused(401, "unknown token")
        return name

    def identify(self, request: Request) -> Identity:
        header = request.headers.get("authorization", "")
        scheme, _, bearer = header.partition(" ")
        by_header = scheme.lower() == "bearer" and bool(bearer.strip())
        reviewer = self.settings.reviewer
        if self.settings.auth == "token":
            presented = bearer.strip() if by_header else request.cookies.get(TOKEN_COOKIE, "")
            name = self._token_name(presented) if presented else None
            if name is None:
                raise Refused(401, "a valid token is required (Authorization: Bearer <token>, or log in)")
            reviewer = name
        if self.settings.reviewer_header:
            reviewer = request.headers.get(self.settings.reviewer_header, "").strip()
            if not reviewer:
                raise Refused(401, f"no {self.settings.reviewer_header} header (set by the trusted proxy)")
        return Identity(reviewer=reviewer, by_header=by_header and self.settings.auth == "token")

    def check_origin(self, request: Request) -> None:
        """A browser post from another site (its `Origin` names another host) is refused."""
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host", ""):
            raise Refused(403, "cross-site request refused")

    def check_csrf(self, request: Request, identity: Identity, session: str) -> None:
        if request.method in SAFE_METHODS or identity.by_header:
            return
        presented = request.headers.get(CSRF_HEADER, "")
        if not session or not hmac.compare_digest(presented, self.csrf_token(session)):
            raise Refused(403, "missing or wrong X-CSRF-Token (send it from the page's meta tag)")

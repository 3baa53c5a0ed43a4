"""
The admin HTTP API on twisted.web: health, readiness, metrics, status,
reload and drain, optionally behind a bearer token.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, cast

from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from tlsgate.admin._view import IGatewayView
from tlsgate.certs._stamps import FileSetWatch

_log = Logger()


class TokenFile:
    """
    The admin token, read from a file and re-read whenever its stamp changes,
    so rotating the token needs no restart. Unreadable or empty: nobody gets in.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._watch = FileSetWatch([path])
        self._token: bytes | None = None

    def current(self) -> bytes | None:
        if self._watch.changed():
            try:
                with open(self.path, "rb") as f:
                    token = f.read().strip()
            except OSError as e:
                token = b""
                _log.error(
                    "admin token file {path} cannot be read ({why}); refusing every"
                    " admin request",
                    path=self.path,
                    why=e.strerror,
                    event="admin_token_unreadable",
                )
            else:
                if not token:
                    _log.error(
                        "admin token file {path} is empty; refusing every admin request",
                        path=self.path,
                        event="admin_token_unreadable",
                    )
            self._token = token or None
        return self._token

    def allows(self, request: Request) -> bool:
        token = self.current()
        header = request.getHeader(b"authorization") or b""
        scheme, _, offered = header.partition(b" ")
        if token is None or scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(offered.strip(), token)


def _json(request: Request, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()


def _text(request: Request, code: int, body: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return body.encode()


def _later(request: Request, d: Deferred[Any], render: Callable[[Any], bytes]) -> int:
    """Answer C{request} once C{d} fires (a supervisor asks its workers first)."""

    def done(result: Any) -> None:
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(render(result))
            request.finish()

    def failed(reason: Failure) -> None:
        _log.failure("admin: {path} failed", reason, path=request.path)
        done_error = _text(request, 500, "internal error\n")
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(done_error)
            request.finish()

    d.addCallbacks(done, failed)
    return NOT_DONE_YET


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, view: IGatewayView) -> None:
        super().__init__()
        self.view = view


class Health(_Leaf):
    def render_GET(self, request: Request) -> bytes:
        return _text(request, 200, "ok\n")


class Ready(_Leaf):
    def render_GET(self, request: Request) -> bytes:
        why = self.view.readiness()
        if why is not None:
            return _text(request, 503, f"{why}\n")
        return _text(request, 200, "ready\n")


class Status(_Leaf):
    def render_GET(self, request: Request) -> int:
        return _later(request, self.view.status(), lambda s: _json(request, 200, s))


class Metrics(_Leaf):
    def render_GET(self, request: Request) -> int:
        def render(families: list[Metric]) -> bytes:
            # As prometheus_client's own MetricsResource: the text format, or
            # OpenMetrics when the scraper asks for it.
            accept = request.getHeader(b"accept")
            encoder, content_type = choose_encoder(accept.decode() if accept else "")
            request.setHeader(b"content-type", content_type.encode())
            return bytes(encoder(_Families(families)))

        return _later(request, self.view.metrics(), render)


class _Families:
    """A collector yielding metric families read beforehand."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class Reload(_Leaf):
    def render_POST(self, request: Request) -> int:
        return _later(
            request,
            self.view.reload(),
            lambda r: _json(request, 200 if r[0] else 422, r[1]),
        )


class Drain(_Leaf):
    def render_POST(self, request: Request) -> bytes:
        _log.info("admin: drain requested", event="drain_requested")
        already = self.view.drain()
        return _json(request, 202, {"draining": True, "already": already})


class _Unauthorized(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setHeader(b"www-authenticate", b'Bearer realm="tlsgate"')
        return _text(
            request, 401, "a valid 'Authorization: Bearer <token>' is needed\n"
        )


class AdminRoot(Resource):
    """
    The admin API's root. With a token file, every request (any path, any
    method) must carry C{Authorization: Bearer <token>}, compared in
    constant time.
    """

    def __init__(self, view: IGatewayView, token: TokenFile | None = None) -> None:
        super().__init__()
        self.token = token
        self.putChild(b"healthz", Health(view))
        self.putChild(b"readyz", Ready(view))
        self.putChild(b"status", Status(view))
        self.putChild(b"reload", Reload(view))
        self.putChild(b"drain", Drain(view))
        self.putChild(b"metrics", Metrics(view))

    def getChildWithDefault(self, path: bytes, request: Request) -> Resource:
        if self.token is not None and not self.token.allows(request):
            return _Unauthorized()
        child: Resource = super().getChildWithDefault(path, request)
        return child

    def render_GET(self, request: Request) -> bytes:
        if self.token is not None and not self.token.allows(request):
            return _Unauthorized().render(request)
        return _text(
            request, 200,
            "tlsgate admin: GET /healthz /readyz /metrics /status; POST /reload /drain\n",
        )  # fmt: skip


def token_file(path: str | None) -> TokenFile | None:
    return TokenFile(os.fspath(path)) if path else None


def use_token_file(admin: Any, path: str | None) -> None:
    """
    Guard the running admin API (the service listening with an L{AdminRoot}
    site) with the token file at C{path} from the next request on, as a
    SIGHUP that changes C{admin_token_file} does.
    """
    cast(AdminRoot, admin.factory.resource).token = token_file(path)

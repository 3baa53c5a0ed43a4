"""
The admin HTTP API on twisted.web: health, readiness, metrics, status,
reload and drain, optionally behind a bearer token.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import TYPE_CHECKING, Any

from prometheus_client.twisted import MetricsResource
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from tlsgate.admin._metrics import make_registry
from tlsgate.admin._status import gateway_status, reload_now
from tlsgate.certs._stamps import FileSetWatch

if TYPE_CHECKING:
    from tlsgate.service import GatewayService

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


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, gateway: GatewayService) -> None:
        super().__init__()
        self.gateway = gateway


class Health(_Leaf):
    def render_GET(self, request: Request) -> bytes:
        return _text(request, 200, "ok\n")


class Ready(_Leaf):
    def render_GET(self, request: Request) -> bytes:
        gateway = self.gateway
        down = [n for n, lsn in gateway.listeners.items() if not lsn.service.listening]
        if gateway.draining:
            return _text(request, 503, "draining\n")
        if down:
            return _text(request, 503, f"not listening: {', '.join(sorted(down))}\n")
        return _text(request, 200, "ready\n")


class Status(_Leaf):
    def render_GET(self, request: Request) -> bytes:
        return _json(request, 200, gateway_status(self.gateway))


class Reload(_Leaf):
    def render_POST(self, request: Request) -> bytes:
        ok, result = reload_now(self.gateway)
        return _json(request, 200 if ok else 422, result)


class Drain(_Leaf):
    def render_POST(self, request: Request) -> bytes:
        already = self.gateway.draining
        if not already:
            _log.info("admin: drain requested", event="drain_requested")
            self.gateway.drain()
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

    def __init__(self, gateway: GatewayService, token: TokenFile | None = None) -> None:
        super().__init__()
        self.token = token
        self.putChild(b"healthz", Health(gateway))
        self.putChild(b"readyz", Ready(gateway))
        self.putChild(b"status", Status(gateway))
        self.putChild(b"reload", Reload(gateway))
        self.putChild(b"drain", Drain(gateway))
        self.putChild(
            b"metrics", MetricsResource(make_registry(lambda: gateway.listeners))
        )

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

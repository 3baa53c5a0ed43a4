"""
The servername callback: switch the connection to the certificate the client
asked for by SNI, or refuse an unknown name with the C{unrecognized_name}
alert when strict.

pyOpenSSL's own wrapper cannot choose the alert without printing a
traceback for every refusal (a cheap way for a scanner to flood the logs),
so the callback is installed through the same cffi binding it uses, with
OpenSSL's C{SSL_TLSEXT_ERR_ALERT_FATAL} and the C{unrecognized_name} alert
OpenSSL preselects.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib
from twisted.logger import Logger

from tlsgate.sni._directory import SniDirectory

_log = Logger()


def install_servername_callback(
    ctx: SSL.Context, directory: SniDirectory | None, strict: bool
) -> None:
    """Make C{ctx} (the listener's default) switch by SNI for its connections."""

    def servername(ssl: Any, alert: Any, arg: Any) -> int:
        try:
            connection = SSL.Connection._reverse_mapping[ssl]
            raw = connection.get_servername()
            if raw is None:
                return 0  # no SNI: the default certificate
            chosen = (
                directory.context_for(raw.decode("ascii", "replace"))
                if directory
                else None
            )
            if chosen is not None:
                connection.set_context(chosen)
                return 0
            if strict:
                return int(lib.SSL_TLSEXT_ERR_ALERT_FATAL)  # unrecognized_name
            return 0
        except Exception:
            _log.failure("servername callback failed")
            return int(lib.SSL_TLSEXT_ERR_ALERT_FATAL)

    callback = ffi.callback("int (*)(SSL *, int *, void *)", servername)
    ctx._tlsgate_servername = callback  # type: ignore[attr-defined]  # keep it alive
    lib.SSL_CTX_set_tlsext_servername_callback(ctx._context, callback)

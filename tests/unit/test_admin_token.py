"""
The admin API's token file swapped on a running admin API (a SIGHUP that
changes C{admin_token_file}), through L{tlsgate.admin.use_token_file}.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from tlsgate.admin import AdminRoot, use_token_file
from tlsgate.admin._resources import _Unauthorized


def allowed(root: AdminRoot, token: str | None) -> bool:
    request = DummyRequest([b"healthz"])
    if token is not None:
        request.requestHeaders.addRawHeader(
            b"authorization", f"Bearer {token}".encode()
        )
    return not isinstance(root.getChildWithDefault(b"healthz", request), _Unauthorized)


def test_a_new_token_file_guards_the_next_request(tmp_path: Path) -> None:
    root = AdminRoot(cast(Any, object()))
    admin = SimpleNamespace(factory=Site(root))
    (tmp_path / "a").write_text("one\n")
    (tmp_path / "b").write_text("two\n")
    assert allowed(root, None)  # no token file: open, as configured
    use_token_file(admin, str(tmp_path / "a"))
    assert allowed(root, "one") and not allowed(root, "two") and not allowed(root, None)
    use_token_file(admin, str(tmp_path / "b"))
    assert allowed(root, "two") and not allowed(root, "one")
    use_token_file(admin, None)
    assert allowed(root, None)

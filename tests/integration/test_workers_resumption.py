"""
workers = 2: both workers serve, and a TLS session made on one worker
resumes on the other, before and after a certificate renewal; a session
from before the renewal does not resume after it (generation binding).
"""

from __future__ import annotations

import ssl

import pytest

from tests.helpers import write_atomically
from tests.integration.conftest import Site, free_port
from tests.integration.workers import children, ready, served_by, wait_until


def _resume_elsewhere(
    site: Site, admin: int, ctx: ssl.SSLContext, first: int, session: ssl.SSLSession
) -> None:
    for _ in range(200):
        pid, reused, _ = served_by(site, admin, ctx=ctx, session=session)
        if pid != first:
            assert reused, "a session from one worker did not resume on the other"
            return
    raise AssertionError("every connection landed on the same worker")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_session_resumes_on_the_other_worker(
    site: Site, version: ssl.TLSVersion
) -> None:
    admin = free_port()
    gateway = site.start(workers="2", admin=f"tcp:{admin}:interface=127.0.0.1")
    wait_until(lambda: ready(admin), what="readyz")
    assert len(children(gateway.proc.pid)) == 3  # a fork server and two workers
    ctx = site.client_context()
    ctx.minimum_version = ctx.maximum_version = version

    first, reused, session = served_by(site, admin, ctx=ctx)
    assert not reused and session is not None
    _resume_elsewhere(site, admin, ctx, first, session)

    # A renewal: sessions made under the new certificate resume across
    # workers; one made under the old certificate resumes nowhere.
    renewed = site.new_pair()
    write_atomically(site.cert, renewed.chain, 0o644)
    write_atomically(site.key, renewed.key)
    for _ in range(20):  # every worker notices the renewal on its next connection
        pid, reused, _ = served_by(site, admin, ctx=ctx, session=session)
        assert not reused, "a session resumed across a certificate change"
    pid, reused, session = served_by(site, admin, ctx=ctx)
    assert session is not None
    _resume_elsewhere(site, admin, ctx, pid, session)
    assert site.served() == renewed.fingerprint

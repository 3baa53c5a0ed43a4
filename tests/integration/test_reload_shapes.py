"""
A running gateway sees every shape of certificate change on the very next
connection, with no signal, and survives every broken one.
"""

from __future__ import annotations

import datetime
import os

from tests.helpers import utcnow, write, write_atomically
from tests.integration.conftest import Site


def test_atomic_rename(site: Site) -> None:
    """certbot/acme.sh style: write elsewhere, rename over."""
    site.start()
    assert site.served() == site.first.fingerprint
    new = site.new_pair()
    write_atomically(site.key, new.key)
    write_atomically(site.cert, new.chain)
    assert site.served() == new.fingerprint


def test_in_place_rewrite(site: Site) -> None:
    """cp over the same files."""
    site.start()
    new = site.new_pair()
    write(site.cert, new.chain)
    write(site.key, new.key)
    assert site.served() == new.fingerprint


def test_delete_then_restore(site: Site) -> None:
    """Jetty's fatal sequence is harmless: the old one serves while files are gone."""
    site.start()
    saved_cert, saved_key = site.cert.read_bytes(), site.key.read_bytes()
    site.cert.unlink()
    site.key.unlink()
    assert site.served() == site.first.fingerprint
    new = site.new_pair()
    write(site.cert, new.chain)
    write(site.key, new.key)
    assert site.served() == new.fingerprint
    write_atomically(site.cert, saved_cert)
    write_atomically(site.key, saved_key)
    assert site.served() == site.first.fingerprint


def test_garbage_is_survived_logged_once_then_replaced(site: Site) -> None:
    """Garbage keeps the last good certificate; one log line, however many clients."""
    gateway = site.start()
    write_atomically(site.cert, b"this is not a certificate\n")
    for _ in range(5):
        assert site.served() == site.first.fingerprint
    new = site.new_pair()
    write_atomically(site.key, new.key)
    write_atomically(site.cert, new.chain)
    assert site.served() == new.fingerprint
    # Logged once per process that saw the garbage (each worker checks its files).
    workers = int(site.ini_values().get("workers", "1"))
    assert 1 <= gateway.log.count("keeping certificate generation 1") <= workers


def test_pair_caught_mid_update_heals(site: Site) -> None:
    """New cert with the old key is refused; the key landing completes the swap."""
    site.start()
    new = site.new_pair()
    write_atomically(site.cert, new.chain)
    assert site.served() == site.first.fingerprint
    write_atomically(site.key, new.key)
    assert site.served() == new.fingerprint


def test_kubernetes_data_symlink_swap(site: Site) -> None:
    """A Secret volume update: ..data is re-pointed to a new timestamped dir."""
    tmp = site.tmp
    for name, pair in (
        ("..2026_11_21_a", site.first),
        ("..2026_11_21_b", site.new_pair()),
    ):
        (tmp / name).mkdir()
        write(tmp / name / "tls.crt", pair.chain, 0o644)
        write(tmp / name / "tls.key", pair.key)
        if name.endswith("b"):
            second = pair
    os.symlink("..2026_11_21_a", tmp / "..data")
    os.symlink("..data/tls.crt", tmp / "tls.crt")
    os.symlink("..data/tls.key", tmp / "tls.key")
    site.cert, site.key = tmp / "tls.crt", tmp / "tls.key"
    site.start()
    assert site.served() == site.first.fingerprint
    os.symlink("..2026_11_21_b", tmp / "..data_tmp")
    os.replace(tmp / "..data_tmp", tmp / "..data")
    assert site.served() == second.fingerprint


def test_expired_replacement_is_not_served(site: Site) -> None:
    """A valid certificate is never swapped for an expired one."""
    gateway = site.start()
    now = utcnow()
    expired = site.new_pair(
        not_before=now - datetime.timedelta(days=10),
        not_after=now - datetime.timedelta(days=1),
    )
    write_atomically(site.key, expired.key)
    write_atomically(site.cert, expired.chain)
    assert site.served() == site.first.fingerprint
    assert "expired" in gateway.log

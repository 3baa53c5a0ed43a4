"""
How a config reload's changes are worded in the log.

One process (L{tlsgate._reconfigure}) and the supervisor of workers
(L{tlsgate.workers._build}) apply a new config differently, but an operator
reading the log after a SIGHUP should see the same line for the same change
whichever runs, and alerts written against one keep working after a switch
to the other. Both take their words from here.
"""

from __future__ import annotations


def listening(name: str, listen: str) -> str:
    """A listener added, or moved to a new endpoint, now accepts there."""
    return f"listener {name}: listening on {listen}"


def updated(name: str) -> str:
    """A listener on the same endpoint took new settings."""
    return f"listener {name}: new settings for new connections"


def retired(name: str, moved_to: str | None = None) -> str:
    """A listener removed (or moved away); its connections are not cut."""
    why = "removed" if moved_to is None else f"moved to {moved_to}"
    return f"listener {name}: {why}; its open connections continue"


def not_started(name: str, error: object) -> str:
    """A new listener whose endpoint could not be listened on."""
    return f"listener {name}: NOT started: {error}"


def admin_kept() -> str:
    """A changed C{admin} endpoint is not applied until a restart."""
    return "admin: a changed admin endpoint needs a restart; kept the old one"


def log_format_kept() -> str:
    """A changed C{log_format} is not applied until a restart."""
    return "log_format: a change needs a restart; kept the old one"


def token_file_changed() -> str:
    """The admin API's token file was swapped."""
    return "admin: token file changed"


def drain_delay(seconds: float) -> str:
    """A new C{drain_delay}, for the next drain."""
    return f"drain_delay: now {seconds:g}s"


def drain_timeout(seconds: float) -> str:
    """A new C{drain_timeout}, for the next drain."""
    return f"drain_timeout: now {seconds:g}s"

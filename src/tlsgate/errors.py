"""
The errors tlsgate raises, as one small hierarchy.

Every message names what is wrong the way an operator finds it: the ini file,
section and key for configuration, the file path for certificates.
"""

from __future__ import annotations

from collections.abc import Sequence


class TlsgateError(Exception):
    """Base of every error tlsgate raises on purpose."""


class ConfigError(TlsgateError):
    """
    One problem in an ini file, located by file, section and key.

    ``section`` and ``key`` are ``None`` when the problem is with the whole
    file (unreadable, not ini) or the whole section.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str,
        section: str | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.section = section
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file
        if self.section is not None:
            where += f": [{self.section}]"
        if self.key is not None:
            where += f" {self.key}"
        return f"{where}: {self.message}"


class ConfigErrors(TlsgateError):
    """All the problems found in one ini file, so an operator fixes them at once."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class CertificateError(TlsgateError):
    """
    Certificate or key files that cannot be served.

    ``paths`` are the files involved so that the message and the log name them.
    """

    def __init__(self, message: str, *, paths: Sequence[str]) -> None:
        self.message = message
        self.paths = tuple(paths)
        super().__init__(f"{', '.join(self.paths)}: {message}")


class ListenError(TlsgateError):
    """A listener could not bind its endpoint."""


class BackendUnavailable(TlsgateError):
    """No backend of a listener accepted a connection."""

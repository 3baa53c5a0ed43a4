"""
JSON logs (C{log_format = json}): one JSON object per line, stable keys.

Every line has C{time}, C{level}, C{event} and C{message}; the keys an
operator filters on (C{listener}, C{peer}, C{reason}, C{fingerprint},
C{generation}, C{duration}, C{bytes}, C{path}, C{backend}, C{error}) appear
whenever the event carries them. C{event} is a stable name for tlsgate's
own events (C{certificate_reloaded}, C{certificate_reload_failed}, ...) and
C{log} for anything else, so alerts do not depend on message wording.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, LogEvent, formatEvent
from twisted.python.logfile import LogFile

#: The keys copied from an event when present, in this order.
STABLE_KEYS = (
    "listener", "peer", "reason", "fingerprint", "generation", "duration", "bytes",
    "path", "backend", "error", "worker",
)  # fmt: skip


def _plain(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def format_json_line(event: LogEvent) -> str:
    """One log event as one line of JSON (with its newline)."""
    when = datetime.datetime.fromtimestamp(event.get("log_time", 0), datetime.UTC)
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "event": event.get("event", "log"),
        "message": formatEvent(event),
        "namespace": event.get("log_namespace", ""),
    }
    for key in STABLE_KEYS:
        if key in event:
            out[key] = _plain(event[key])
    failure = event.get("log_failure")
    if failure is not None:
        out["failure"] = failure.getTraceback()
    return json.dumps(out, sort_keys=False) + "\n"


def json_observer(out: IO[str]) -> ILogObserver:
    return FileLogObserver(out, format_json_line)


#: Where twistd was told to log (C{--logfile}, C{-n}); set by the plugin's
#: options before twistd creates its logger, as twistd's C{logger} option
#: takes the dotted name of a factory without arguments.
twistd_destination: tuple[str | None, bool] = (None, True)


def twistd_json_observer() -> ILogObserver:
    """
    twistd's C{logger} factory for JSON lines, honouring C{--logfile} and C{-n}
    the way twistd's own text logger does.
    """
    logfile, nodaemon = twistd_destination
    if logfile == "-" or (nodaemon and not logfile):
        return json_observer(sys.stdout)
    return json_observer(LogFile.fromFullPath(logfile or "twistd.log"))

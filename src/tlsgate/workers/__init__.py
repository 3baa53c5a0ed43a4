"""
Several worker processes for one gateway (C{[gateway] workers} above 1).

The supervisor (in the twistd process) binds the listeners and serves the
admin endpoint; a fork server that never runs a reactor builds the TLS
contexts once and forks the workers, which inherit its session ticket keys
and serve the inherited sockets with a fresh reactor each. See
docs/workers.md.
"""

from tlsgate.workers._build import build_supervisor, reload_supervisor
from tlsgate.workers._control import WorkerHandle
from tlsgate.workers._decisions import Backoff, merge_metrics, merge_status
from tlsgate.workers._launcher import IForkServer, ILauncher, ProcessLauncher
from tlsgate.workers._supervisor import SupervisorService
from tlsgate.workers._view import SupervisorView

__all__ = [
    "Backoff",
    "IForkServer",
    "ILauncher",
    "ProcessLauncher",
    "SupervisorService",
    "SupervisorView",
    "WorkerHandle",
    "build_supervisor",
    "merge_metrics",
    "merge_status",
    "reload_supervisor",
]

"""
The admin API's view of a gateway run by worker processes: every request
is asked of every live worker and the answers are added up.
"""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.internet.defer import Deferred, DeferredList
from zope.interface import implementer

from tlsgate._version import __version__
from tlsgate.admin import IGatewayView
from tlsgate.workers._control import WorkerHandle
from tlsgate.workers._decisions import counter_samples, merge_metrics, merge_status
from tlsgate.workers._supervisor import SupervisorService


@implementer(IGatewayView)
class SupervisorView:
    def __init__(self, supervisor: SupervisorService) -> None:
        self.supervisor = supervisor

    def readiness(self) -> str | None:
        s = self.supervisor
        if s.draining:
            return "draining"
        missing = sorted(set(range(s.config.workers)) - s.serving_slots())
        if missing:
            return f"workers not serving: {', '.join(map(str, missing))}"
        return None

    def _ask(self, command: str) -> Deferred[list[tuple[WorkerHandle, dict[str, Any]]]]:
        asked = [
            (w, w.control.request(command))
            for w in sorted(
                self.supervisor.workers, key=lambda w: (w.slot, w.generation)
            )
            if w.control is not None and w.state != "starting"
        ]

        def answers(
            results: list[tuple[bool, Any]],
        ) -> list[tuple[WorkerHandle, dict[str, Any]]]:
            return [
                (w, value)
                for (w, _), (ok, value) in zip(asked, results, strict=True)
                if ok
            ]

        return DeferredList([d for _, d in asked], consumeErrors=True).addCallback(
            answers
        )

    def _reports(self) -> Deferred[list[tuple[WorkerHandle, dict[str, Any]]]]:
        def keep(answers: list[tuple[WorkerHandle, dict[str, Any]]]) -> Any:
            for w, report in answers:
                w.counters = counter_samples(report.get("metrics", []))
                self.supervisor.note_generations(report.get("generations", {}))
            return answers

        return self._ask("report").addCallback(keep)

    def _process(self) -> dict[str, Any]:
        s = self.supervisor
        return {
            "workers": s.config.workers,
            "serving": len(s.serving_slots()),
            "alive": len(s.workers),
            "restarts": s.restarts,
            "generation": s.generation,
        }

    def status(self) -> Deferred[dict[str, Any]]:
        def document(
            answers: list[tuple[WorkerHandle, dict[str, Any]]],
        ) -> dict[str, Any]:
            reports = {id(w): r["status"] for w, r in answers}
            return {
                "version": __version__,
                "draining": self.supervisor.draining,
                "process": self._process(),
                "workers": [
                    {
                        "slot": w.slot,
                        "pid": w.pid,
                        "generation": w.generation,
                        "state": w.state,
                        "listeners": reports.get(id(w), {}).get("listeners"),
                    }
                    for w in sorted(
                        self.supervisor.workers, key=lambda w: (w.slot, w.generation)
                    )
                ],
                "listeners": merge_status([r["status"] for _, r in answers]),
            }

        return self._reports().addCallback(document)

    def metrics(self) -> Deferred[list[Metric]]:
        def families(
            answers: list[tuple[WorkerHandle, dict[str, Any]]],
        ) -> list[Metric]:
            out = merge_metrics(
                [r.get("metrics", []) for _, r in answers], self.supervisor.retired
            )
            process = self._process()
            workers = GaugeMetricFamily(
                "tlsgate_workers", "Worker processes, by state.", labels=["state"]
            )
            states = [w.state for w in self.supervisor.workers]
            for state in ("starting", "serving", "draining"):
                workers.add_metric([state], states.count(state))
            restarts = CounterMetricFamily(
                "tlsgate_worker_restarts", "Workers replaced after they died."
            )
            restarts.add_metric([], process["restarts"])
            generation = GaugeMetricFamily(
                "tlsgate_worker_generation",
                "Generation of the workers (and session ticket keys) serving.",
            )
            generation.add_metric([], process["generation"])
            active = GaugeMetricFamily(
                "tlsgate_worker_connections_active",
                "Open client connections per worker process.", labels=["worker"],
            )  # fmt: skip
            for w, report in answers:
                count = sum(
                    lsn["connections"]["active"]
                    for lsn in report["status"]["listeners"].values()
                )
                active.add_metric([f"{w.slot}.{w.generation}"], count)
            return [*out, workers, restarts, generation, active]

        return self._reports().addCallback(families)

    def reload(self) -> Deferred[tuple[bool, dict[str, Any]]]:
        def result(
            answers: list[tuple[WorkerHandle, dict[str, Any]]],
        ) -> tuple[bool, dict[str, Any]]:
            ok = bool(answers) and all(a.get("ok") for _, a in answers)
            first = answers[0][1]["result"]["listeners"] if answers else {}
            return ok, {
                "ok": ok,
                "listeners": first,
                "workers": {str(w.slot): a["result"] for w, a in answers},
            }

        return self._ask("reload").addCallback(result)

    def drain(self) -> bool:
        already = self.supervisor.draining
        self.supervisor.drain()
        return already

"""The REST API's ``/metrics`` (Prometheus text) and the problems ``/healthz`` reports."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from unbake.workspace import ledger
from unbake.workspace.request_store import STUCK_AFTER

if TYPE_CHECKING:
    from unbake.service.deletion import DeletionService
    from unbake.service.serving import ServedModel

#: How many recent requests the latency summaries of ``/metrics`` read.
LATENCY_WINDOW = 1000


def _seconds(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _latencies(service: DeletionService) -> dict[str, list[float]]:
    """Seconds from ``applying`` (and from ``received``) to ``applied``, of the most
    recently applied requests."""
    rows = service.workspace.request_store.timestamps(
        ("received", "applying", "applied"), LATENCY_WINDOW
    )
    times: dict[str, dict[str, str]] = {}
    for r in rows:
        times.setdefault(r["request_id"], {})[r["state"]] = r["timestamp"]
    out: dict[str, list[float]] = {"apply": [], "request": []}
    for t in times.values():
        if "applied" in t and "applying" in t:
            out["apply"].append(_seconds(t["applying"], t["applied"]))
        if "applied" in t and "received" in t:
            out["request"].append(_seconds(t["received"], t["applied"]))
    return out


def _summary(name: str, help_text: str, values: list[float]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} summary"]
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        value = ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
        lines.append(f'{name}{{quantile="{q}"}} {value:.6g}')
    lines += [f"{name}_sum {sum(values):.6g}", f"{name}_count {len(values)}"]
    return lines


def health_problems(worker: dict[str, Any], requests: dict[str, Any]) -> list[str]:
    """Why the service is degraded (none: it is not): the worker's state and
    :meth:`DeletionService.health`'s figures, as one line each."""
    problems = []
    if worker["state"] == "failed":
        problems.append(
            "the worker exited too often and is left stopped; see the server's log, fix the "
            "cause and restart `unbake serve`"
        )
    if requests["stuck_applying"]:
        problems.append(
            f"{requests['stuck_applying']} requests have been applying for more than "
            f"{requests['stuck_after_seconds']:g} s (the oldest {requests['oldest_applying_seconds']:.0f} s)"
        )
    if requests["overdue"]:
        problems.append(
            f"{requests['overdue']} requests are past their deadline (the worst by "
            f"{requests['most_overdue_seconds']:.0f} s); see `unbake status`"
        )
    return problems


def render_metrics(
    service: DeletionService, served: ServedModel, *, stuck_after: float = STUCK_AFTER
) -> str:
    """The Prometheus text exposition of queue depth, requests per state, latencies, and
    requests stuck applying or past their deadline."""
    counts = service.state_counts()
    lines = [
        "# HELP unbake_queue_depth Deletion requests waiting for the worker.",
        "# TYPE unbake_queue_depth gauge",
        f"unbake_queue_depth {counts.get('queued', 0)}",
        "# HELP unbake_requests Deletion requests by current state.",
        "# TYPE unbake_requests gauge",
    ]
    lines += [f'unbake_requests{{state="{s}"}} {counts.get(s, 0)}' for s in ledger.STATES]
    lat = _latencies(service)
    lines += _summary(
        "unbake_apply_latency_seconds",
        f"Seconds from applying to applied (last {LATENCY_WINDOW} applied requests).",
        lat["apply"],
    )
    lines += _summary(
        "unbake_request_latency_seconds",
        f"Seconds from received to applied (last {LATENCY_WINDOW} applied requests).",
        lat["request"],
    )
    health = service.health(stuck_after=stuck_after)
    gauges = (
        (
            "requests_stuck_applying",
            "stuck_applying",
            f"Requests applying for longer than {stuck_after:g} s.",
        ),
        (
            "requests_stuck_applying_oldest_seconds",
            "oldest_applying_seconds",
            "Seconds the oldest stuck request has been applying (0: none).",
        ),
        ("requests_overdue", "overdue", "Requests not yet applied whose deadline has passed."),
        (
            "requests_overdue_max_seconds",
            "most_overdue_seconds",
            "Seconds the most overdue request is past its deadline (0: none).",
        ),
    )
    for name, key, help_text in gauges:
        lines += [
            f"# HELP unbake_{name} {help_text}",
            f"# TYPE unbake_{name} gauge",
            f"unbake_{name} {health[key]:.6g}",
        ]
    lines += [
        "# HELP unbake_model_swaps_total Times this server swapped its served model.",
        "# TYPE unbake_model_swaps_total counter",
        f"unbake_model_swaps_total {served.swaps}",
    ]
    return "\n".join(lines) + "\n"

"""What the coordinator's metrics read from its database when scraped (issue 14): its
replication jobs and policy runs, by status."""

from __future__ import annotations

from coordinator.models import JobStatus
from coordinator.policy_models import FAILED, FINISHED, KIND_NAMES, RUNNING, SKIPPED
from coordinator.policy_store import PolicyStore
from coordinator.store import Store
from csbs.tally import Figure

RUN_STATUS_NAMES = {RUNNING: "running", FINISHED: "finished", SKIPPED: "skipped", FAILED: "failed"}


def coordinator_figures(store: Store) -> list[Figure]:
    jobs = store.job_counts()
    figures = [
        Figure(
            "csbs_replication_jobs",
            "Replication jobs the coordinator holds (every account's), by status",
            jobs.get(status, 0),
            {"status": status.name.lower()},
        )
        for status in JobStatus
        if status != JobStatus.UNSPECIFIED
    ]
    runs = PolicyStore(store).run_counts()
    figures += [
        Figure(
            "csbs_policy_runs",
            "Policy runs the coordinator holds, by kind and status",
            runs.get((kind, status), 0),
            {"kind": kind_name, "status": status_name},
        )
        for kind, kind_name in KIND_NAMES.items()
        for status, status_name in RUN_STATUS_NAMES.items()
    ]
    return figures

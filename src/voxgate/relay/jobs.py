"""The status of server-side downsample jobs (bossDB's ``/v1/downsample/``), kept in the relay's
state file so that every worker process of ``voxgate serve --workers N`` answers the same:
``state["downsample"][upstream URL] = {"status", "pid"}`` (the pid of the process running
it: a job whose process is gone without saying how it ended is FAILED)."""

from __future__ import annotations

import os

from .catalog import Catalog

__all__ = ["job_status", "set_job_status"]


def job_status(catalog: Catalog, url: str) -> str | None:
    """The recorded status of the channel (upstream ``url``), or None when there is none."""
    job = catalog.state.get("downsample", {}).get(url)
    if not isinstance(job, dict):
        return None
    status = str(job.get("status"))
    if status == "IN_PROGRESS" and not _alive(job.get("pid")):
        return "FAILED"  # its process ended without saying (killed)
    return status


def set_job_status(catalog: Catalog, url: str, status: str | None) -> None:
    """Record ``status`` (None: forget the channel's) in a transaction on the state file."""
    with catalog.lock:
        jobs = catalog.state.setdefault("downsample", {})
        want = None if status is None else {"status": status, "pid": os.getpid()}
        if jobs.get(url) != want and (status is not None or url in jobs):
            if want is None:
                del jobs[url]
            else:
                jobs[url] = want
            catalog.save()


def _alive(pid: object) -> bool:
    """Whether process ``pid`` is running."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

"""The status of server-side downsample jobs (bossDB's ``/v1/downsample/``), kept in the relay's
state file so that every worker process of ``voxgate serve --workers N`` answers the same:
``state["downsample"][upstream URL] = {"status", "pid", "started"}`` (the pid of the process
running it and when that process started, where the system says: a job whose process is gone
without saying how it ended is FAILED, and so is one whose pid is another process's now, as
after a relay killed during a job is started again with the same pids, as a container's
processes are), and ``"written": true`` once level 0 was written while the job ran.

A write to level 0 makes a finished pyramid stale: DOWNSAMPLED becomes NOT_DOWNSAMPLED, as in
bossDB.  A write *during* a job leaves it IN_PROGRESS (a second POST is refused with 409, as
in bossDB) but the job then ends NOT_DOWNSAMPLED, since it may have read that region before
the write landed: bossDB would say DOWNSAMPLED over a pyramid that lacks the write.

An upstream that rebuilds its coarser scales itself from every level-0 write (a DVID labelmap
or labelarray with coarser scales: ``Capability.DERIVED_SCALES``) has them current as soon as
a write returns, by its own rule: the job computes and writes nothing there (:func:`run_job`)
and ends DOWNSAMPLED at once.  Recomputing them wasted the work and wrote voxgate's mode rule
over DVID's (zeros vote in voxgate's, not in DVID's; ties go to another label)."""

from __future__ import annotations

import os
from typing import Any

from ..remotes.base import Capability, has_capability
from .catalog import Catalog

__all__ = ["finish_job", "job_status", "note_write", "run_job", "set_job_status"]

#: the statuses of a job that has not ended
_RUNNING = ("QUEUED", "IN_PROGRESS")


def job_status(catalog: Catalog, url: str) -> str | None:
    """The recorded status of the channel (upstream ``url``), or None when there is none."""
    job = catalog.state.get("downsample", {}).get(url)
    if not isinstance(job, dict):
        return None
    status = str(job.get("status"))
    # (a running job's record has its id: one without is an earlier voxgate's, from a relay
    # run before this one, whose pid, alive or not, is not its process any more)
    if status == "IN_PROGRESS" and ("job" not in job
                                    or not _alive(job.get("pid"), job.get("started"))):
        return "FAILED"  # its process ended without saying (killed)
    return status


def set_job_status(catalog: Catalog, url: str, status: str | None,
                   job: str | None = None) -> None:
    """Record ``status`` (None: forget the channel's) in a transaction on the state file;
    ``job``: the id of the job that starts (see :func:`finish_job`)."""
    with catalog.lock:
        jobs = catalog.state.setdefault("downsample", {})
        pid = os.getpid()
        want = None if status is None else {"status": status, "pid": pid,
                                            "started": _started(pid)}
        if want is not None and job is not None:
            want["job"] = job
        if jobs.get(url) != want and (status is not None or url in jobs):
            if want is None:
                del jobs[url]
            else:
                jobs[url] = want
            catalog.save()


def _after_write(catalog: Catalog, url: str) -> dict[str, object] | str | None:
    """What a level-0 write changes: the record of a running job not yet marked written (to
    mark), "reset" (a status to make NOT_DOWNSAMPLED), or None (nothing)."""
    status = job_status(catalog, url)
    if status in _RUNNING:  # (job_status found its record, a dict)
        job = catalog.state["downsample"][url]
        return None if job.get("written") else job
    return None if status == "NOT_DOWNSAMPLED" else "reset"


def note_write(catalog: Catalog, url: str) -> None:
    """Level 0 of the channel (upstream ``url``) was written: see the module docstring.  Called
    after the write's data landed; a job that had started by then is seen here (its status is
    saved before it reads anything, and the state is refreshed first)."""
    catalog.refresh()  # (one stat unless another process saved)
    if _after_write(catalog, url) is None:
        return  # nothing to change (the common case: no lock taken)
    with catalog.lock:  # decided again on the state as it is under the lock
        change = _after_write(catalog, url)
        if isinstance(change, dict):
            change["written"] = True
            catalog.save()
        elif change == "reset":
            set_job_status(catalog, url, "NOT_DOWNSAMPLED")


def finish_job(catalog: Catalog, url: str, ok: bool, job: str) -> str:
    """Record how the channel's job (its id ``job``, as :func:`set_job_status` was given it)
    ended and return the status: FAILED, or DOWNSAMPLED unless level 0 was written while it
    ran (then NOT_DOWNSAMPLED).  Recorded only while the record is still the job's: a channel
    deleted while its job ended (the delete waits for the job's writes, not for this) has no
    record any more, and one created again under the name (the same upstream URL) has a
    status of its own, which the old job's end wrote over (a FAILED from the delete's move of
    its store, say, carried over to the new channel)."""
    with catalog.lock:
        record = catalog.state.get("downsample", {}).get(url)
        written = isinstance(record, dict) and bool(record.get("written"))
        status = "FAILED" if not ok else "NOT_DOWNSAMPLED" if written else "DOWNSAMPLED"
        if isinstance(record, dict) and record.get("job") == job:
            set_job_status(catalog, url, status)
    return status


def run_job(remote: Any) -> None:
    """The job's work on ``remote`` (the channel's CachedRemote): every coarser level
    recomputed from level 0 through the cache, or nothing when the upstream keeps its own."""
    from ..services.downsample import downsample
    from ..volume import Volume

    if has_capability(remote.upstream, Capability.DERIVED_SCALES):
        return
    downsample(Volume(remote), len(remote.meta.scales), prefer="local")


def _alive(pid: object, started: object = None) -> bool:
    """Whether process ``pid`` is running, and is the one that started at ``started`` (as
    :func:`_started` gave it) when both are known: a pid is used again by a later process."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if isinstance(started, str):
        now = _started(pid)
        if now is not None and now != started:
            return False  # another process with the pid
    return True


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot, from /proc), or None where the
    system does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # (after the command name, which may hold spaces and parentheses: field 22 overall)
        return stat[stat.rindex(b")") + 2:].split()[19].decode()
    except (OSError, ValueError, IndexError):
        return None

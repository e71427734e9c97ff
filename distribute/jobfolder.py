"""A job's folder in the local copy, made safe to write into before a job runs.

A remote's content is not trusted: a symbolic link committed in a job's folder (on the
main branch, or on an earlier attempt's branch that a retry starts from) would make a
job write through it to a file outside the local copy.  :func:`secure_job_folder`
replaces such links before anything is written there; their targets are never touched.
"""

from __future__ import annotations

import os
from pathlib import Path


def secure_job_folder(copy: str, folder: str, *, create: bool = True) -> list[str]:
    """Make the job's ``folder`` inside the local copy ``copy`` safe to write into; return
    the links removed (paths relative to ``copy``).

    Every folder on the way from ``copy`` to ``folder`` that is a symbolic link is
    replaced by a real, empty folder, and every link within ``folder`` whose target
    (resolved) lies outside ``folder`` is removed.  Only links are removed: their
    targets, and any other file, stay as they are.  With ``create`` (the default) the
    folder exists afterwards; without, a folder that did not exist is not made.
    """
    removed: list[str] = []
    here = copy
    for part in Path(os.path.relpath(folder, copy)).parts:
        here = os.path.join(here, part)
        if os.path.islink(here):
            os.unlink(here)
            removed.append(os.path.relpath(here, copy))
        if create:
            os.makedirs(here, exist_ok=True)
    if not os.path.isdir(folder):
        return removed  # not made (``create=False``): nothing inside to check
    inside = os.path.realpath(folder)
    for top, folders, files in os.walk(folder):  # never descends through a link
        for name in (*folders, *files):
            path = os.path.join(top, name)
            if not os.path.islink(path):
                continue
            target = os.path.realpath(path)
            if os.path.commonpath([inside, target]) != inside:
                os.unlink(path)
                removed.append(os.path.relpath(path, copy))
    return removed


__all__ = ["secure_job_folder"]

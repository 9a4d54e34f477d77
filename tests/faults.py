"""Fault injection for tests only: hooks the model stages call when ECGEMBED_FAULT_HOOK names them.

    ECGEMBED_FAULT_HOOK=tests.faults:die_once:/tmp/faultdir

``/tmp/faultdir/fault.json`` says which model and which batch: {"model": "melp", "batch": 2}.
The actor process exits (like an OOM kill or a lost node) the first time that model's actor
reaches that batch; a marker file makes it happen once, not again in the restarted actor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def die_once(fault_dir: str, model: str, batch_index: int) -> None:
    folder = Path(fault_dir)
    spec = json.loads((folder / "fault.json").read_text())
    if model != spec["model"] or batch_index != spec["batch"]:
        return
    try:
        fd = os.open(folder / "fired", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(1)


def slow(seconds: str, model: str, batch_index: int) -> None:
    """ECGEMBED_FAULT_HOOK=tests.faults:slow:1.5 makes every model batch take that much longer,
    so a test can act while a run is reliably mid-way (e.g. kill its driver before it commits)."""
    import time

    time.sleep(float(seconds))


def bug_for(record_id: str, step: str, current: str) -> None:
    """ECGEMBED_PREPARE_FAULT_HOOK=tests.faults:bug_for:<record id> raises an unexpected exception
    (a stand-in for a bug in ecgembed or a library) while preparing that one record."""
    if current == record_id:
        raise ZeroDivisionError("float division by zero in a library nobody expected to fail")

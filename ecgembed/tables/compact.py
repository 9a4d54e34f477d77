"""``ecgembed compact OUTPUT --retention-hours N``: fewer, larger files, and old files deleted.

Each nightly run adds a few small files to every table. Compaction, holding the output lock
(so no run's uncommitted files can be mistaken for garbage), per table:

1. finishes or cleans what crashed runs left (:func:`ecgembed.tables.commit.recover`);
2. **optimize**: rewrites small files into large ones (zstd) in a commit that changes no row:
   every row, current or superseded, stays, with its ``run_id``, so the views are unchanged;
3. **vacuum**: deletes files no table version newer than ``retention_hours`` ago references
   (the small files step 2 replaced, and anything a crashed writer left). Time travel to a
   version older than the retention is no longer possible; readers still on such a version
   (a long query started before) may fail, so keep the retention longer than your longest query.
"""

from __future__ import annotations

from datetime import datetime, timezone

from deltalake import WriterProperties
from deltalake.transaction import CommitProperties

from ecgembed.errors import ConfigError
from ecgembed.tables import delta
from ecgembed.tables.commit import recover
from ecgembed.tables.lock import OutputLock


def compact(output: str, retention_hours: int, lock_lease_s: float = 300.0) -> dict:
    """Optimize and vacuum every table; returns per table the files rewritten and deleted."""
    if retention_hours < 0:
        raise ConfigError(f"--retention-hours must be >= 0, not {retention_hours}")
    run_id = f"compact-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    out: dict = {}
    with OutputLock(output, run_id, lease_s=lock_lease_s) as lock:
        out["recovered"] = recover(output, run_id, lock)
        for name, table in delta.list_tables(output).items():
            lock.check()
            metrics = table.optimize.compact(
                writer_properties=WriterProperties(compression="ZSTD", compression_level=3),
                commit_properties=CommitProperties(custom_metadata={"ecgembed.operation": "compact"}))
            deleted = table.vacuum(retention_hours=retention_hours, dry_run=False,
                                   enforce_retention_duration=False, full=True)
            out[name] = {"files_added": metrics["numFilesAdded"], "files_removed": metrics["numFilesRemoved"],
                         "files_deleted": len(deleted), "version": table.version()}
    return out

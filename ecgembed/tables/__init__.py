"""Output tables as Delta Lake tables: schemas, rows, the Ray sink, the commit, the lock, views.

What the pipeline calls (docs/tables.md and docs/nightly.md say why):

- :func:`ecgembed.tables.ledger.read_ledger`, :func:`ecgembed.tables.ledger.select_work`
- :class:`ecgembed.tables.lock.OutputLock` (``.took_over``, ``.check()``)
- :func:`ecgembed.tables.commit.recover`, :func:`ecgembed.tables.commit.commit_run`,
  :func:`ecgembed.tables.commit.read_runs`
- :class:`ecgembed.tables.sink.EcgTablesDatasink`
- :func:`ecgembed.tables.views.connect`, :func:`ecgembed.tables.compact.compact`,
  :func:`ecgembed.tables.migrate.migrate`
"""

"""Nearest-neighbour search over a model's current embeddings (FAISS); see ``docs/search.md``.

- :func:`build_index` / :func:`update_index`: write ``OUTPUT/_index/<model>/`` (exact flat
  index for small outputs, IVF above :data:`ann.EXACT_MAX` vectors); the update is incremental.
- :func:`neighbours` / :func:`neighbours_of_vector`: record ids and cosines, best first.
- :func:`index_status`: how the stored index compares with the current rows.
"""

from importlib import import_module

# FAISS loads only when an index is used: a run over an output without an index, or a machine
# without faiss, never imports it (``ecgembed.search.store`` alone is enough to see there is none).
_HOME = {"build_index": "index", "index_status": "index", "update_index": "index",
         "neighbours": "query", "neighbours_of_vector": "query", "SearchError": "store"}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(import_module(f"ecgembed.search.{_HOME[name]}"), name)
    raise AttributeError(f"module 'ecgembed.search' has no attribute {name!r}")


__all__ = ["SearchError", "build_index", "index_status", "neighbours", "neighbours_of_vector", "update_index"]

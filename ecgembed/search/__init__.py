"""Nearest-neighbour search over a model's current embeddings (FAISS); see ``docs/search.md``.

- :func:`build_index` / :func:`update_index`: write ``OUTPUT/_index/<model>/`` (exact flat
  index for small outputs, IVF above :data:`ann.EXACT_MAX` vectors); the update is incremental.
- :func:`neighbours` / :func:`neighbours_of_vector`: record ids and cosines, best first.
- :func:`index_status`: how the stored index compares with the current rows.
"""

from ecgembed.search.index import build_index, index_status, update_index
from ecgembed.search.query import neighbours, neighbours_of_vector
from ecgembed.search.store import SearchError

__all__ = ["SearchError", "build_index", "index_status", "neighbours", "neighbours_of_vector", "update_index"]

"""Stores, the indexing pipeline, search backends and search.

    from polymodal.index import index, Searcher
    index("photos/", model="runs/emoji/model")        # -> photos.pm/
    hits = Searcher("photos.pm").search("a dog on a beach", k=10)
"""

from polymodal.index.api import index, info, remove_items
from polymodal.index.search import Filter, Hit, Searcher

__all__ = ["Filter", "Hit", "Searcher", "index", "info", "remove_items"]

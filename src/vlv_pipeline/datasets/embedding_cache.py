"""``EmbeddingCacheDataset``: a Kedro dataset whose ``load()`` is a handle
(``shard_store.EmbeddingCache``) on stage 2's sharded cache of caption embeddings and their
text-encoder outputs.

Catalog (``embedding_cache_previous`` names the same directory: the node that extends the
cache reads the previous state and writes the new one, as with ``LatentCacheDataset``)::

    embedding_cache:
      type: vlv_pipeline.datasets.embedding_cache.EmbeddingCacheDataset
      path: data/04_feature/embedding_cache
"""

from __future__ import annotations

from vlv_pipeline.datasets.latent_cache import LatentCacheDataset
from vlv_pipeline.datasets.shard_store import EmbeddingCache


class EmbeddingCacheDataset(LatentCacheDataset):
    """Kedro dataset whose ``load()`` is an :class:`EmbeddingCache` handle on a directory."""

    cache_class = EmbeddingCache

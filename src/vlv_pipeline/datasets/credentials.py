"""``CredentialsDataset``: hands a node the credentials Kedro resolved for a catalog entry.

Kedro gives credentials to datasets, not to nodes; this read-only dataset is the bridge.
The secret lives in ``conf/local/credentials.yml`` (ignored by git); conf/base holds only
an empty placeholder so runs that do not need it still start::

    captioner_credentials:
      type: vlv_pipeline.datasets.credentials.CredentialsDataset
      credentials: captioner        # -> {api_key: ...} from conf/local/credentials.yml
"""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError


class CredentialsDataset(AbstractDataset[dict, None]):
    def __init__(self, *, credentials: dict[str, Any] | None = None, metadata=None):
        self._credentials = dict(credentials or {})
        self.metadata = metadata

    def load(self) -> dict[str, Any]:
        return dict(self._credentials)

    def save(self, data: None) -> None:
        raise DatasetError("credentials are read-only: edit conf/local/credentials.yml")

    def _describe(self) -> dict[str, Any]:
        return {"keys": sorted(self._credentials)}  # never the values

"""``ModelCardDataset``: the model card (``README.md``) of a versioned model directory, for
the nodes that fill in its evaluation after the model was saved (``models/model_card.py``).

Its ``filepath`` is the model's own (``data/06_models/vlv_encoder``): the card lives in the
model's version folder, ``<filepath>/<version>/<name>/README.md``. ``save(evaluation)``
rewrites the evaluation of the version this run saved (Kedro gives every versioned dataset of
a run one save version), or, when this run saved none (``kedro run --nodes card_stage1``
after an earlier run), of the version its load version names (the latest unless pinned). The
rewrite is atomic (``model_card_evaluation.update_evaluation``: a temporary beside the card,
renamed over it). ``load()`` returns the card's text.

Example catalog entry::

    vlv_encoder_card:
      type: vlv_pipeline.datasets.model_card.ModelCardDataset
      filepath: ${globals:data}/06_models/vlv_encoder
      versioned: true
"""

from __future__ import annotations

from pathlib import Path

from kedro.io.core import DatasetError, VersionNotFoundError

from vlv_pipeline.datasets.local_versioned import LocalVersionedDataset
from vlv_pipeline.errors import ModelDirectoryError
from vlv_pipeline.models.model_card_evaluation import update_evaluation
from vlv_pipeline.models.model_card_parts import CARD


class ModelCardDataset(LocalVersionedDataset[dict, str]):
    """The card of the model directory at ``filepath`` (versioned, as the model is)."""

    def _directory(self) -> Path:
        """The model directory whose card this run writes (module docstring)."""
        if self._version and self._version.save:
            saved = Path(self._get_versioned_path(self._version.save))
            if saved.is_dir():
                return saved
        try:
            return Path(self._get_load_path())
        except VersionNotFoundError as error:
            raise ModelDirectoryError(
                f"no model saved under {self._filepath} to write the card of: run the pipeline "
                "that saves it first"
            ) from error

    def load(self) -> str:
        card = self._directory() / CARD
        if not card.is_file():
            raise ModelDirectoryError(f"{card.parent} has no model card ({CARD})")
        return card.read_text(encoding="utf-8")

    def save(self, data: dict) -> None:
        if not data:
            return  # nothing measured (a captioner that was not scored)
        update_evaluation(self._directory(), data)

    def _exists(self) -> bool:
        try:
            return (self._directory() / CARD).is_file()
        except DatasetError:
            return False

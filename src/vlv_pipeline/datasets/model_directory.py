"""``ModelDirectoryDataset`` loads/saves a ``save_pretrained`` directory: a diffusers or
transformers model, a pipeline (e.g. ``StableDiffusionPipeline``), a tokenizer, a
scheduler, or any object with ``save_pretrained``/``from_pretrained``.

Saves are atomic (written to a hidden temporary sibling, flushed to disk, then renamed into
place: ``files.atomic_target``) and safetensors-only: pickle weights (``*.bin``, ``*.pt``, ``*.pth``, ``*.pkl``, ``*.ckpt``)
are refused on save and on load. A damaged safetensors file is refused by name
(``models/tensor_files.naming_damaged``). Local filesystem only.

A save replacing an unversioned directory moves the previous one aside, renames the new one
in, then removes the previous (``files.replace_tree``); if the process dies between those two
renames, the next load or save puts the previous one back (``files.restore_backup``).

A directory that is not there, is not a ``save_pretrained`` directory, or holds pickle weights
(or a save that would write them) is refused with a ``ModelDirectoryError`` (a ``UserError``:
``kedro run`` prints its message alone); a versioned one never saved, with
``NoSavedVersionError`` (Kedro's ``VersionNotFoundError``, worded for the user).

A model's card: an object with a ``model_card`` text (a VLV encoder or captioner a node just
made: ``models/model_card.py``) gets it written as ``README.md`` in the temporary copy,
before the rename: saved with the model or not at all.

What a model was made for: a VLV encoder or captioner directory holds ``provenance.json``
(``models/provenance.py``). The preflight hook hands every model directory a run reads what
the run's parameters expect of it (``check_provenance_with``); ``load`` then reads that
record first (JSON only) and refuses a model made for another setting with a
``ProvenanceError`` naming what differs and what makes the right one.

Example catalog entry::

    teacher:
      type: vlv_pipeline.datasets.ModelDirectoryDataset
      filepath: data/06_models/teacher
      load_class: diffusers.StableDiffusionPipeline
      versioned: true

    caption_tokenizer:
      type: vlv_pipeline.datasets.ModelDirectoryDataset
      filepath: data/06_models/caption_tokenizer
      load_class: transformers.AutoTokenizer

    vlv_text_encoder:
      type: vlv_pipeline.datasets.ModelDirectoryDataset
      filepath: data/06_models/text_encoder
      load_class: transformers.CLIPTextModel
      load_args:
        dtype: bfloat16    # names a torch dtype (diffusers classes: torch_dtype)
      save_args:
        max_shard_size: 2GB

    vlv_captioner:
      type: vlv_pipeline.datasets.ModelDirectoryDataset
      filepath: ${globals:data}/06_models/vlv_captioner
      load_class: vlv_pipeline.models.captioner.VLVCaptioner
      versioned: true
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

from kedro.io.core import DatasetError, Version, VersionNotFoundError
from kedro_datasets._typing import TablePreview

from vlv_pipeline.datasets.local_versioned import LocalVersionedDataset
from vlv_pipeline.errors import ModelDirectoryError
from vlv_pipeline.models.model_card import write_card

MARKER_FILES = ("model_index.json", "config.json", "tokenizer_config.json", "scheduler_config.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# from_pretrained of these (and their subclasses) takes `use_safetensors`.
_SAFETENSORS_LOADERS = {"ModelMixin", "DiffusionPipeline", "PreTrainedModel", "_BaseAutoModelClass"}


def _pickle_files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES
    )


def _import_class(dotted: str) -> type:
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise DatasetError(
            f"Cannot import load_class '{dotted}'; give a dotted path such as "
            f"'diffusers.AutoencoderKL' or 'transformers.AutoTokenizer'."
        ) from exc


def _resolve_dtypes(kwargs: dict[str, Any]) -> dict[str, Any]:
    """YAML cannot spell a ``torch.dtype``: turn ``dtype: bfloat16`` into ``torch.bfloat16``."""
    for key in ("dtype", "torch_dtype"):
        value = kwargs.get(key)
        if isinstance(value, str) and value != "auto":
            import torch

            dtype = getattr(torch, value, None)
            if not isinstance(dtype, torch.dtype):
                raise DatasetError(f"load_args {key}: '{value}' is not a torch dtype name")
            kwargs[key] = dtype
    return kwargs


def _takes_use_safetensors(cls: type) -> bool:
    if any(base.__name__ in _SAFETENSORS_LOADERS for base in inspect.getmro(cls)):
        return True
    return "use_safetensors" in inspect.signature(cls.from_pretrained).parameters


class NoSavedVersionError(ModelDirectoryError, VersionNotFoundError):
    """A versioned model directory with no saved version yet."""


class LazyModel:
    """A model not loaded yet: ``lazy()`` loads it (the latest version, checked as usual)."""

    def __init__(self, load, where: str) -> None:
        self._load, self.where = load, where

    def __call__(self) -> Any:
        return self._load()

    def __repr__(self) -> str:
        return f"LazyModel({self.where})"


class ModelDirectoryDataset(LocalVersionedDataset[Any, Any]):
    """A ``save_pretrained`` directory, loaded with ``<load_class>.from_pretrained``.

    Examples:
        >>> from transformers import CLIPTextConfig, CLIPTextModel
        >>> model = CLIPTextModel(CLIPTextConfig(vocab_size=64, hidden_size=16,
        ...     intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        ...     max_position_embeddings=16, pad_token_id=1, bos_token_id=0, eos_token_id=2))
        >>> dataset = ModelDirectoryDataset(
        ...     filepath=tmp_path / "clip", load_class="transformers.CLIPTextModel")
        >>> dataset.save(model)
        >>> reloaded = dataset.load()
    """

    DEFAULT_LOAD_ARGS: dict[str, Any] = {}
    DEFAULT_SAVE_ARGS: dict[str, Any] = {}

    def __init__(
        self,
        *,
        filepath: str | os.PathLike,
        load_class: str,
        load_args: dict[str, Any] | None = None,
        save_args: dict[str, Any] | None = None,
        version: Version | None = None,
        metadata: dict[str, Any] | None = None,
        lazy: bool = False,
    ) -> None:
        """Creates a new ``ModelDirectoryDataset`` for a local directory.

        Args:
            filepath: Local directory path. Versioned: ``<filepath>/<version>/<name>``.
            load_class: Dotted import path of the class whose ``from_pretrained`` loads
                the directory, e.g. ``diffusers.AutoencoderKL``.
            load_args: Extra keyword arguments for ``from_pretrained``.
                ``use_safetensors=True`` is added for model and pipeline classes.
            save_args: Extra keyword arguments for ``save_pretrained``.
                ``safe_serialization=True`` is added where the method takes it.
            version: A ``kedro.io.core.Version``; ``load=None`` loads the latest
                version, ``save=None`` generates a timestamp.
            metadata: Any arbitrary metadata; ignored by Kedro.
            lazy: ``load()`` returns a ``LazyModel``: calling it loads the model. For a node
                that chooses one of several models by a parameter (``caption.model``), so
                the one not chosen is never read and need not exist.
        """
        super().__init__(filepath=filepath, version=version, metadata=metadata)
        if "." not in load_class:
            raise DatasetError(
                f"load_class '{load_class}' must be a dotted import path, e.g. "
                f"'diffusers.AutoencoderKL' or 'transformers.AutoTokenizer'."
            )
        self._load_class = load_class
        self._load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        self._save_args = {**self.DEFAULT_SAVE_ARGS, **(save_args or {})}
        self._lazy = lazy
        self._provenance_check = None

    def check_provenance_with(self, check) -> None:
        """Before each load, ``check(directory)`` (a ``provenance_check.ProvenanceCheck``): it
        raises when the model was made for another setting."""
        self._provenance_check = check

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._filepath,
            "load_class": self._load_class,
            "load_args": self._load_args,
            "save_args": self._save_args,
            "version": self._version,
            "lazy": self._lazy,
        }

    # ------------------------------------------------------------------ load

    def _never_saved(self) -> Exception:
        return NoSavedVersionError(
            f"Did not find any versions of model directory '{self._filepath}': no "
            f"<version>/{self._filepath.name} folder there yet (the pipeline that saves it "
            f"makes one)"
        )

    def _checked_load_path(self) -> Path:
        """The directory to load, after checking it looks like a model directory."""
        path = self._load_path()
        if not path.is_dir():
            what = "is a file, not a directory" if path.exists() else "does not exist"
            raise ModelDirectoryError(
                f"Model directory '{path}' {what}. Run the pipeline that saves it, or point "
                f"'filepath' to a save_pretrained directory."
            )
        if not any((path / name).is_file() for name in MARKER_FILES):
            raise ModelDirectoryError(
                f"'{path}' is not a save_pretrained directory: it has none of {MARKER_FILES} "
                f"(it contains {sorted(p.name for p in path.iterdir())[:10]}). Point 'filepath' "
                f"to the directory that holds one of them."
            )
        return path

    def load(self) -> Any:
        if self._lazy:
            return LazyModel(self._load_now, str(self._filepath))
        return self._load_now(named=False)  # the catalog names the dataset in its errors

    def _load_now(self, named: bool = True) -> Any:
        path = self._checked_load_path()
        pickles = _pickle_files(path)
        if pickles:
            raise ModelDirectoryError(
                f"Refusing to load '{path}': it contains pickle weights {pickles[:5]} and this "
                f"dataset loads safetensors only. Re-save the model with "
                f"save_pretrained(..., safe_serialization=True) and delete the pickle files."
            )
        if self._provenance_check is not None:
            self._provenance_check(path, named)  # the record only: before any weight
        cls = _import_class(self._load_class)
        kwargs = _resolve_dtypes(dict(self._load_args))
        if _takes_use_safetensors(cls):
            kwargs.setdefault("use_safetensors", True)
        from vlv_pipeline.models.tensor_files import model_dir_hint, naming_damaged

        with naming_damaged(path, what_to_do=model_dir_hint(path)):
            return cls.from_pretrained(str(path), **kwargs)

    # ------------------------------------------------------------------ save

    def save(self, data: Any) -> None:
        if not callable(getattr(data, "save_pretrained", None)):
            raise DatasetError(
                f"{type(self).__name__} saves objects with a save_pretrained method; "
                f"got {type(data).__name__}."
            )
        with self._saving_folder() as tmp:
            kwargs = dict(self._save_args)
            if "safe_serialization" in inspect.signature(data.save_pretrained).parameters:
                kwargs.setdefault("safe_serialization", True)
            data.save_pretrained(str(tmp), **kwargs)
            pickles = _pickle_files(tmp)
            if pickles:
                raise ModelDirectoryError(
                    f"save_pretrained wrote pickle files {pickles[:5]}; this dataset keeps "
                    f"safetensors only (check save_args: safe_serialization must stay True)."
                )
            card = getattr(data, "model_card", None)  # models/model_card.py
            if isinstance(card, str):
                write_card(tmp, card)

    def _exists(self) -> bool:
        try:
            path = self._load_path()
        except DatasetError:
            return False
        return path.is_dir() and any((path / name).is_file() for name in MARKER_FILES)

    # --------------------------------------------------------------- preview

    def preview(self, nrows: int = 200) -> TablePreview:
        """A table for kedro-viz: the directory's config keys/values, then its files.

        Args:
            nrows: The maximum number of rows.

        Returns:
            dict: ``{"index", "columns", "data"}`` like pandas ``to_dict(orient="split")``.
        """
        path = self._checked_load_path()
        rows: list[list[Any]] = []
        for name in MARKER_FILES:
            config_file = path / name
            if not config_file.is_file():
                continue
            for key, value in json.loads(config_file.read_text()).items():
                shown = value if isinstance(value, str | int | float | bool) else json.dumps(value)
                rows.append([name, key, shown])
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            rows.append(["file", str(file.relative_to(path)), file.stat().st_size])
        rows = rows[:nrows]
        return TablePreview(
            {"index": list(range(len(rows))), "columns": ["source", "name", "value"], "data": rows}
        )

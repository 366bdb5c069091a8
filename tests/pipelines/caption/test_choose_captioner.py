"""``choose_captioner`` says "run stage2 first" only when no captioner is saved; any other
failure (a damaged file, a model made for another setting, a bug, CUDA out of memory) comes
through as it is, with its own message and traceback (issue 26, review)."""

from __future__ import annotations

import pytest
from kedro.io import DatasetError
from kedro.io.core import VersionNotFoundError

from vlv_pipeline.errors import InputError, MissingInputError, ModelDirectoryError, UserError
from vlv_pipeline.models.captioning import choose_captioner
from vlv_pipeline.models.provenance_check import ProvenanceError
from vlv_pipeline.models.tensor_files import DamagedWeightsError
from vlv_pipeline.params.evaluate import CaptionParams


class Lazy:
    """A ``LazyModel`` whose load raises ``error``."""

    where = "data/06_models/vlv_captioner"

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __call__(self):
        raise self.error


def _choose(error: BaseException, model: str = "trained"):
    lazy = Lazy(error)
    return choose_captioner(lazy, lazy, CaptionParams(model=model))


@pytest.mark.parametrize(
    "error",
    [
        VersionNotFoundError("Did not find any versions for ModelDirectoryDataset(...)"),
        DatasetError("Model directory 'x' does not exist. Run the pipeline that saves it"),
        MissingInputError("no such directory"),
        ModelDirectoryError("'x' is not a save_pretrained directory"),
    ],
    ids=["no-version", "no-directory", "missing-input", "not-a-model-directory"],
)
@pytest.mark.parametrize(
    ("model", "make"), [("trained", "stage2"), ("published", "import_published")]
)
def test_no_saved_captioner_says_which_pipeline_makes_one(error, model, make):
    with pytest.raises(InputError, match=f"run `kedro run --pipeline {make}` first") as info:
        _choose(error, model)
    assert info.value.__cause__ is error


@pytest.mark.parametrize(
    "error",
    [
        DamagedWeightsError("x/model.safetensors is not a readable safetensors file"),
        ProvenanceError("made for another text-to-image model"),
    ],
    ids=["damaged", "provenance"],
)
def test_other_user_errors_keep_their_own_message(error):
    with pytest.raises(UserError) as info:
        _choose(error)
    assert info.value is error  # not wrapped: its advice is the right one
    assert "stage2" not in str(info.value)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        ImportError("cannot import name 'VLVCaptioner'"),
        TypeError("__init__() got an unexpected keyword argument 'x'"),
    ],
    ids=["oom", "import", "bug"],
)
def test_a_bug_or_a_full_gpu_is_not_called_a_missing_captioner(error):
    with pytest.raises(type(error)) as info:
        _choose(error)
    assert info.value is error and not isinstance(info.value, UserError)

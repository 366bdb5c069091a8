"""The tiny stage-1 data shared by the stage-1 tests, made the way a run makes it."""

import pytest
from world_factory import stage1_data


@pytest.fixture(scope="module")
def data(tiny_sd, tmp_path_factory):
    """8 train and 4 test world images of 16 px, latents under the tiny SD's VAE."""
    return stage1_data(tiny_sd, tmp_path_factory.mktemp("stage1-world"))

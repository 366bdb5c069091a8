"""Resuming never unpickles code: the EMA state is safetensors, pickles in a checkpoint are
refused (issue 26, item 2), and resume with EMA stays exact."""

import os
import subprocess
import sys

import pytest
import torch
from regression_run import regression_data, regression_model, regression_params

from vlv_pipeline.training.loop import list_checkpoints, train

_data = regression_data


def _params(**overrides):
    return regression_params(**{"keep_checkpoints": 3, "ema_decay": 0.9, **overrides})


def _model(**kw):
    return regression_model(**kw)


def _killed_at_6(directory):
    """A run killed in step 7: checkpoint-4 is the latest on disk."""
    with pytest.raises(KeyboardInterrupt):
        train(_model(crash_at=6), _data(), _params(), checkpoint_dir=directory)
    assert [step for step, _ in list_checkpoints(directory)] == [4]
    return directory / "checkpoint-4"


class Payload:
    """Unpickled with weights_only=False, it creates a folder: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_ema_is_saved_as_safetensors_and_resumes_exactly(tmp_path):
    reference = _model()
    expected = train(reference, _data(), _params()).ema

    checkpoint = _killed_at_6(tmp_path)
    assert (checkpoint / "ema.safetensors").is_file()
    assert not list(checkpoint.glob("custom_checkpoint_*"))  # nothing pickled for the EMA

    resumed = _model()
    result = train(resumed, _data(), _params(), checkpoint_dir=tmp_path)
    assert result.resumed_from == 4 and resumed.calls == 8
    assert result.ema.optimization_step == expected.optimization_step == 12
    for ours, theirs in zip(result.ema.shadow_params, expected.shadow_params, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(resumed.linear.weight, reference.linear.weight, atol=1e-6)


@pytest.mark.parametrize(
    "name", ["custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"]
)
def test_a_planted_pickle_in_a_checkpoint_never_runs(tmp_path, name):
    checkpoint = _killed_at_6(tmp_path / "run")
    marker = tmp_path / "payload-ran"
    torch.save({"state": Payload(marker)}, checkpoint / name)
    try:
        train(_model(), _data(), _params(), checkpoint_dir=tmp_path / "run")
        refused = None
    except Exception as error:  # the message is checked below
        refused = error
    assert not marker.exists(), f"the payload planted as {name} ran on resume"
    assert refused is not None, f"a checkpoint with a foreign {name} resumed"
    message = str(refused)
    assert str(checkpoint) in message  # names the checkpoint
    assert "training.resume: false" in message  # and says how to start fresh
    if name.startswith("custom_checkpoint"):
        assert name in message and "convert_ema" in message


def test_an_old_pickled_ema_checkpoint_is_refused_then_converts(tmp_path):
    from safetensors.torch import load_file

    expected = train(_model(), _data(), _params()).ema
    checkpoint = _killed_at_6(tmp_path / "run")
    # rewrite it as Accelerate wrote it before: the EMAModel state dict, pickled
    import json

    from safetensors import safe_open

    with safe_open(str(checkpoint / "ema.safetensors"), "pt") as f:
        scalars = json.loads(f.metadata()["ema"])
    tensors = load_file(str(checkpoint / "ema.safetensors"))
    shadow = [tensors["linear.weight"], tensors["linear.bias"]]  # the EMA's order
    torch.save({**scalars, "shadow_params": shadow}, checkpoint / "custom_checkpoint_0.pkl")
    (checkpoint / "ema.safetensors").unlink()

    with pytest.raises(ValueError, match="custom_checkpoint_0.pkl") as error:
        train(_model(), _data(), _params(), checkpoint_dir=tmp_path / "run")
    assert "python -m vlv_pipeline.training.convert_ema" in str(error.value)

    done = subprocess.run(
        [sys.executable, "-m", "vlv_pipeline.training.convert_ema", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env={**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"},
    )
    assert done.returncode == 0, done.stderr
    assert (checkpoint / "ema.safetensors").is_file()
    assert not (checkpoint / "custom_checkpoint_0.pkl").exists()
    result = train(_model(), _data(), _params(), checkpoint_dir=tmp_path / "run")
    assert result.resumed_from == 4
    for ours, theirs in zip(result.ema.shadow_params, expected.shadow_params, strict=True):
        assert torch.allclose(ours, theirs, atol=1e-6)


def test_the_converter_refuses_a_payload_without_running_it(tmp_path):
    from vlv_pipeline.training.checkpoint import convert_pickled_ema

    checkpoint = _killed_at_6(tmp_path / "run")
    (checkpoint / "ema.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    torch.save({"shadow_params": [Payload(marker)]}, checkpoint / "custom_checkpoint_0.pkl")
    with pytest.raises(ValueError, match="custom_checkpoint_0.pkl"):
        convert_pickled_ema(checkpoint)
    assert not marker.exists()
    assert (checkpoint / "custom_checkpoint_0.pkl").exists()  # left as it was


@pytest.mark.parametrize("name", ["trainable.safetensors", "ema.safetensors"])
def test_a_damaged_checkpoint_file_is_named(tmp_path, name):
    checkpoint = _killed_at_6(tmp_path / "run")
    data = (checkpoint / name).read_bytes()
    (checkpoint / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as error:
        train(_model(), _data(), _params(), checkpoint_dir=tmp_path / "run")
    assert str(checkpoint / name) in str(error.value)
    assert "training.resume: false" in str(error.value)

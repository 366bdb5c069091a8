"""Resuming never unpickles code: the EMA state is safetensors, pickles in a checkpoint are
refused (issue 26, item 2), and resume with EMA stays exact."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from regression_run import regression_data, regression_model, regression_params

from vlv_pipeline.training.loop import train
from vlv_pipeline.training.run_folders import list_checkpoints

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
    from vlv_pipeline.training.convert_ema import convert_pickled_ema

    checkpoint = _killed_at_6(tmp_path / "run")
    (checkpoint / "ema.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    torch.save({"shadow_params": [Payload(marker)]}, checkpoint / "custom_checkpoint_0.pkl")
    with pytest.raises(ValueError, match="custom_checkpoint_0.pkl"):
        convert_pickled_ema(checkpoint)
    assert not marker.exists()
    assert (checkpoint / "custom_checkpoint_0.pkl").exists()  # left as it was


@pytest.mark.parametrize(
    "name", ["trainable.safetensors", "ema.safetensors", "optimizer.bin", "random_states_0.pkl"]
)
def test_a_damaged_checkpoint_file_is_named(tmp_path, name):
    checkpoint = _killed_at_6(tmp_path / "run")
    data = (checkpoint / name).read_bytes()
    (checkpoint / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError) as error:
        train(_model(), _data(), _params(), checkpoint_dir=tmp_path / "run")
    assert str(checkpoint / name) in str(error.value)
    assert "training.resume: false" in str(error.value)


def _reading_everything_first(reads):
    """An ``Accelerator.load_state`` that unpickles the checkpoint's files before anything
    else, as DeepSpeed's engine does (torch.load(weights_only=False), before Accelerate's
    load hooks run)."""

    def load_state(self, input_dir=None, **kwargs):
        for path in sorted(Path(input_dir).rglob("*")):
            if path.name == ".metadata":  # torch.distributed.checkpoint: a plain pickle
                reads.append(path.name)
                pickle.loads(path.read_bytes())
            elif path.is_file() and path.suffix in {".pkl", ".bin", ".pt"}:
                reads.append(path.name)
                torch.load(path, weights_only=False)

    return load_state


@pytest.mark.parametrize(
    "name",
    [
        "custom_checkpoint_0.pkl",
        "optimizer.bin",
        "scheduler.bin",
        "random_states_0.pkl",
        "pytorch_model_fsdp.bin",
        "scaler.pt",
    ],
)
def test_the_checks_run_before_accelerate_reads_anything(tmp_path, monkeypatch, name):
    from accelerate import Accelerator

    from vlv_pipeline.training.checkpoint_safety import CheckpointRefusedError

    checkpoint = _killed_at_6(tmp_path / "run")
    marker = tmp_path / "payload-ran"
    torch.save({"state": Payload(marker)}, checkpoint / name)
    reads: list[str] = []
    monkeypatch.setattr(Accelerator, "load_state", _reading_everything_first(reads))
    with pytest.raises(CheckpointRefusedError) as refused:
        train(_model(), _data(), _params(), checkpoint_dir=tmp_path / "run")
    assert not marker.exists(), f"the payload planted as {name} ran on resume"
    assert reads == []  # refused before load_state was called
    message = str(refused.value)
    assert str(checkpoint) in message and name in message  # names the refused file itself
    assert "one of the files" not in message


def _accelerator_as(monkeypatch, backend: str, sharded: bool = False):
    """A real Accelerator (CPU) that reports running under ``backend``."""
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    accelerator = Accelerator(cpu=True)
    monkeypatch.setattr(
        Accelerator, "distributed_type", property(lambda self: DistributedType[backend])
    )
    kind = "SHARDED_STATE_DICT" if sharded else "FULL_STATE_DICT"
    plugin = SimpleNamespace(state_dict_type=SimpleNamespace(name=kind))
    monkeypatch.setattr(accelerator.state, "fsdp_plugin", plugin, raising=False)
    return accelerator


@pytest.mark.parametrize(
    ("backend", "sharded", "engine_file"),
    [
        ("DEEPSPEED", False, "pytorch_model/mp_rank_00_model_states.pt"),
        ("FSDP", True, "pytorch_model_fsdp_0/.metadata"),
    ],
)
def test_an_engine_that_unpickles_its_files_resumes_only_when_trusted(
    tmp_path, monkeypatch, backend, sharded, engine_file
):
    from accelerate import Accelerator

    from vlv_pipeline.training.checkpoint_safety import CheckpointRefusedError
    from vlv_pipeline.training.run_folders import resume_latest

    checkpoint = _killed_at_6(tmp_path / "run")
    marker = tmp_path / "payload-ran"
    (checkpoint / engine_file).parent.mkdir()
    if engine_file.endswith(".metadata"):  # torch.distributed.checkpoint pickles it plainly
        (checkpoint / engine_file).write_bytes(pickle.dumps({"module": Payload(marker)}))
    else:
        torch.save({"module": Payload(marker)}, checkpoint / engine_file)
    reads: list[str] = []
    monkeypatch.setattr(Accelerator, "load_state", _reading_everything_first(reads))
    accelerator = _accelerator_as(monkeypatch, backend, sharded)

    with pytest.raises(CheckpointRefusedError) as refused:
        resume_latest(accelerator, tmp_path / "run", _params(), "test")
    assert not marker.exists() and reads == []
    message = str(refused.value)
    assert str(checkpoint) in message and "training.trust_engine_checkpoints: true" in message
    assert "training.resume: false" in message

    # the user's own run folder: trusted on request (and then the engine reads what it finds)
    start, *_ = resume_latest(
        accelerator, tmp_path / "run", _params(trust_engine_checkpoints=True), "t"
    )
    assert start == 4 and Path(engine_file).name in reads and marker.exists()


def test_full_state_fsdp_checkpoints_need_no_trust(tmp_path, monkeypatch):
    """FSDP with full state dicts reads plain tensors (torch.load(weights_only=True)), which
    are vetted first like the optimizer's."""
    from accelerate import Accelerator

    from vlv_pipeline.training.run_folders import resume_latest

    checkpoint = _killed_at_6(tmp_path / "run")
    torch.save({"weight": torch.ones(2)}, checkpoint / "pytorch_model_fsdp.bin")
    reads: list[str] = []
    monkeypatch.setattr(Accelerator, "load_state", _reading_everything_first(reads))
    start, *_ = resume_latest(
        _accelerator_as(monkeypatch, "FSDP"), tmp_path / "run", _params(), "t"
    )
    assert start == 4 and "pytorch_model_fsdp.bin" in reads


def test_trusting_engine_checkpoints_keeps_the_run_folder(tmp_path):
    from vlv_pipeline.training.run_folders import run_directory

    trusted = _params(trust_engine_checkpoints=True)
    assert run_directory(tmp_path, "s", _params()) == run_directory(tmp_path, "s", trusted)


def _rewrite_ema_metadata(path, text):
    from safetensors.torch import load_file, save_file

    save_file(load_file(str(path)), str(path), metadata={"ema": text})


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('{"decay": "x"}', "decay"),
        ('{"optimization_step": 1.5}', "optimization_step"),
        ('{"decay": NaN}', "decay"),
        ("[1, 2]", "ema"),
        ('{"shadow_params": 3}', "shadow_params"),
        ("{not json", "ema"),
    ],
)
def test_bad_ema_counters_are_refused_by_name(tmp_path, text, named):
    from vlv_pipeline.training.checkpoint_safety import CheckpointRefusedError

    checkpoint = _killed_at_6(tmp_path / "run")
    _rewrite_ema_metadata(checkpoint / "ema.safetensors", text)
    with pytest.raises(CheckpointRefusedError) as refused:
        train(_model(), _data(), _params(), checkpoint_dir=tmp_path / "run")
    message = str(refused.value)
    assert str(checkpoint / "ema.safetensors") in message and named in message
    assert "training.resume: false" in message


def _old_pickled_ema(checkpoint):
    """Rewrite a checkpoint's EMA as Accelerate pickled it before: custom_checkpoint_0.pkl."""
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / "ema.safetensors"))
    state = {"decay": 0.9, "optimization_step": 4}
    state["shadow_params"] = [tensors["linear.weight"], tensors["linear.bias"]]
    torch.save(state, checkpoint / "custom_checkpoint_0.pkl")
    (checkpoint / "ema.safetensors").unlink()
    return checkpoint / "custom_checkpoint_0.pkl"


def test_the_converter_names_a_truncated_pickle(tmp_path, capsys):
    from vlv_pipeline.training import convert_ema
    from vlv_pipeline.training.checkpoint_safety import CheckpointRefusedError
    from vlv_pipeline.training.convert_ema import convert_pickled_ema

    checkpoint = _killed_at_6(tmp_path / "run")
    pickled = _old_pickled_ema(checkpoint)
    data = pickled.read_bytes()
    pickled.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointRefusedError, match="custom_checkpoint_0.pkl"):
        convert_pickled_ema(checkpoint)
    assert convert_ema.main([str(tmp_path / "run")]) == 1
    stderr = capsys.readouterr().err
    assert str(pickled) in stderr and "Traceback" not in stderr
    assert pickled.exists() and not (checkpoint / "ema.safetensors").exists()


def test_the_converter_writes_atomically(tmp_path, monkeypatch):
    from vlv_pipeline.training import convert_ema as module
    from vlv_pipeline.training.convert_ema import convert_pickled_ema

    checkpoint = _killed_at_6(tmp_path / "run")
    pickled = _old_pickled_ema(checkpoint)
    real_save = module.save_file

    def half_written(tensors, filename, metadata=None):  # the disk fills up midway
        real_save(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "save_file", half_written)
    with pytest.raises(OSError):
        convert_pickled_ema(checkpoint)
    assert not (checkpoint / "ema.safetensors").exists()  # never a half-written file
    assert pickled.exists()  # nor a lost pickle
    assert sorted(p.name for p in checkpoint.iterdir() if p.name.startswith(".")) == []

    monkeypatch.setattr(module, "save_file", real_save)
    replaced = []
    real_replace = os.replace

    def recording_replace(source, target):
        replaced.append((Path(source), Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(module.os, "replace", recording_replace)
    assert convert_pickled_ema(checkpoint) == [checkpoint / "ema.safetensors"]
    assert [(s.parent, t) for s, t in replaced] == [(checkpoint, checkpoint / "ema.safetensors")]
    assert not pickled.exists()
    result = train(_model(), _data(), _params(), checkpoint_dir=tmp_path / "run")
    assert result.resumed_from == 4

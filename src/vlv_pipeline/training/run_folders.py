"""A training run's folders: the run folder, named after the training setup
(``run_directory``), and the ``checkpoint-N`` folders in it: listed, written atomically
and resumed from. What a checkpoint holds: ``training/checkpoint.py``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from accelerate import Accelerator

from vlv_pipeline.errors import UnwritableError
from vlv_pipeline.params.training import TrainParams
from vlv_pipeline.training.checkpoint_safety import check_before_loading

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
_HISTORY = "history.json"
# TrainParams keys that change how batches are read, not which: left out of run folders' names
# (nor do where progress is logged, recomputing activations to save memory, or trusting the
# run folder's engine checkpoints: resuming with it must find the same folder)
READING_KEYS = frozenset(
    {
        "num_workers",
        "prefetch_factor",
        "pin_memory",
        "cache_mb",
        "trackers",
        "gradient_checkpointing",
        "trust_engine_checkpoints",
    }
)
# TrainParams keys added after run folders were first named, with the value that trains as
# before they existed: left out of the name at that value, so those runs keep resuming
LATER_KEYS = {"lr_schedule": "cosine"}


def run_directory(root: str | Path, name: str, *configs) -> Path:
    """``<root>/<name>-<hash>``: one checkpoint folder per distinct training setup.

    A rerun with the same parameters resumes there; changed parameters start afresh.
    """
    import hashlib

    def plain(value):
        value = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
        if isinstance(value, dict):  # how batches are read does not change the run
            return {
                k: plain(v)
                for k, v in value.items()
                if k not in READING_KEYS and (k not in LATER_KEYS or LATER_KEYS[k] != v)
            }
        return value

    blob = json.dumps([plain(c) for c in configs], sort_keys=True, default=str)
    return Path(root) / f"{name}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """Complete ``checkpoint-N`` folders under ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        name = path.name
        if name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit():
            if (path / _HISTORY).is_file():  # written last: its presence marks completeness
                found.append((int(name[len(CHECKPOINT_PREFIX) :]), path))
    return sorted(found)


def save_checkpoint(
    accelerator: Accelerator, directory: Path, step: int, history, keep: int, seconds: float
):
    """Save the training state to ``checkpoint-<step>`` atomically (``vlv_pipeline.files``: a
    hidden temporary naming its writer, flushed to disk, renamed into place, a checkpoint
    already there swapped out only once the new one is whole); prune old ones. What goes in
    (the trained models only, optimizer, RNG...): ``training/checkpoint.py``."""
    from accelerate.utils import broadcast_object_list

    from vlv_pipeline import files

    final = directory / f"{CHECKPOINT_PREFIX}{step}"
    name = [None]
    if accelerator.is_main_process:  # before any rank writes: none of the stale ones is theirs
        files.restore_backups(directory)  # a checkpoint a killed swap left aside
        files.remove_stale(
            [*directory.glob(f".{CHECKPOINT_PREFIX}*.tmp*"), *directory.glob(".tmp-checkpoint-*")]
        )
        name = [str(files.temporary_for(final))]
    tmp = Path(broadcast_object_list(name)[0])  # every rank writes its RNG state there
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every rank writes its RNG state into tmp: all first
        if accelerator.is_main_process:
            record = {"step": step, "history": history, "seconds": seconds}
            (tmp / _HISTORY).write_text(json.dumps(record))
            files.fsync_tree(tmp)
            files.replace_tree(tmp, final)
    except OSError as error:
        files.remove_quietly(tmp)
        raise UnwritableError(error.errno, files.unwritable(final, error)) from error
    if accelerator.is_main_process:
        for _, old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def resume_latest(accelerator, directory: Path | None, params: TrainParams, desc: str):
    """(start step, history, seconds so far, resumed-from step) from the latest checkpoint.

    The checkpoint is checked before Accelerate reads any of it (``checkpoint_safety.
    check_before_loading``: no custom pickle, no engine that unpickles its own files unless
    ``params.trust_engine_checkpoints``, every torch file plain tensors); a refusal names
    the file and says what to do. Then ``accelerator.load_state`` loads it."""
    if directory is None or not params.resume:
        return 0, [], 0.0, None
    checkpoints = list_checkpoints(directory)
    if not checkpoints:
        return 0, [], 0.0, None
    start, path = checkpoints[-1]
    # before load_state: under DeepSpeed and FSDP the engine reads its files before the
    # load hooks run (a refusal names the file; every rank refuses alike)
    check_before_loading(path, accelerator, trust_engine=params.trust_engine_checkpoints)
    accelerator.load_state(str(path))
    record = json.loads((path / _HISTORY).read_text())
    logger.info("%s: resuming from %s (step %d of %d)", desc, path, start, params.steps)
    return start, record["history"], record.get("seconds", 0.0), start

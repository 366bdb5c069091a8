"""Convert the pickled EMA state of old checkpoints into ``ema.safetensors``.

    python -m vlv_pipeline.training.convert_ema <checkpoint-N folder or run folder>

Checkpoints written before the EMA state was kept in safetensors hold it as Accelerate's
``custom_checkpoint_0.pkl``, which resuming refuses (unpickling can run code). This reads
it with ``torch.load(weights_only=True)`` (tensors, numbers and lists only: a file with
anything else, or one that does not read, is refused and left as it was), writes
``ema.safetensors`` beside it (a temporary in the same folder, flushed to the disk, then
renamed into place: never half a file) and only then deletes the pickle. Run it only on
checkpoints you wrote yourself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlv_pipeline.errors import MissingInputError, UserError
from vlv_pipeline.training.checkpoint import EMA_FILE, EMA_KINDS
from vlv_pipeline.training.checkpoint_safety import (
    CheckpointRefusedError,
    pickled_custom_states,
    refused_unless_plain,
    resume_from_the_one_before,
)


def _write_ema_file(folder: Path, shadow: list[torch.Tensor], scalars: dict) -> Path:
    """``ema.safetensors`` (by position) written atomically: a temporary in ``folder``,
    flushed to the disk, renamed into place."""
    from vlv_pipeline.errors import UnwritableError
    from vlv_pipeline.files import (
        fsync_file,
        fsync_folder,
        remove_quietly,
        temporary_for,
        unwritable,
    )

    final = folder / EMA_FILE
    temporary = temporary_for(final)
    try:
        save_file(  # by position: the names of the parameters are not in the pickle
            {f"shadow.{i}": t.contiguous() for i, t in enumerate(shadow)},
            str(temporary),
            metadata={"ema": json.dumps(scalars)},
        )
        fsync_file(temporary)
        os.replace(temporary, final)
    except OSError as error:
        remove_quietly(temporary)
        raise UnwritableError(error.errno, unwritable(final, error)) from error
    except BaseException:
        remove_quietly(temporary)
        raise
    fsync_folder(folder)
    return final


def convert_pickled_ema(directory: str | Path) -> list[Path]:
    """Rewrite the ``custom_checkpoint_0.pkl`` of an old checkpoint (or of every checkpoint
    in a run folder) as ``ema.safetensors``. The pickle is read with
    ``torch.load(weights_only=True)``: tensors, numbers and lists only; anything else, or a
    file that does not read, is refused and the file left as it was. ``ema.safetensors``
    is written atomically, then the pickle deleted. Returns the files written."""
    directory = Path(directory)
    folders = [directory] if pickled_custom_states(directory) else []
    if not folders and directory.is_dir():
        folders = sorted(p for p in directory.iterdir() if pickled_custom_states(p))
    if not folders:
        raise MissingInputError(f"no custom_checkpoint_*.pkl in {directory} or its folders")
    written = []
    for folder in folders:
        found = pickled_custom_states(folder)
        if found != ["custom_checkpoint_0.pkl"]:
            raise CheckpointRefusedError(
                f"{folder} holds {found}: the loop only ever saved one (the EMA, "
                "custom_checkpoint_0.pkl); " + resume_from_the_one_before(folder)
            )
        source = folder / found[0]
        with refused_unless_plain(
            source,
            lambda reason: (
                "is not a plain EMA state (torch.load(weights_only=True) refused "
                f"it: {reason}); nothing in it was run and nothing was converted; "
            ),
            "nothing was converted; ",
            resume_from_the_one_before(folder),
        ):
            state = torch.load(source, map_location="cpu", weights_only=True)
        shadow = state.get("shadow_params") if isinstance(state, dict) else None
        if not isinstance(shadow, list) or not all(isinstance(t, torch.Tensor) for t in shadow):
            raise CheckpointRefusedError(f"{source} is not an EMA state (no shadow_params list)")
        scalars = {k: state[k] for k in EMA_KINDS if k in state}
        written.append(_write_ema_file(folder, shadow, scalars))
        source.unlink()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vlv_pipeline.training.convert_ema", description=__doc__.split("\n")[0]
    )
    parser.add_argument("folder", help="a checkpoint-N folder, or the run folder holding them")
    args = parser.parse_args(argv)
    try:
        written = convert_pickled_ema(args.folder)
    except (UserError, OSError) as error:  # refused, not found, or not writable
        print(f"convert_ema: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

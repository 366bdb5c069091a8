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
import sys

from vlv_pipeline.errors import UserError
from vlv_pipeline.training.checkpoint import convert_pickled_ema


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

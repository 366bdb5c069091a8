"""Reading an offline W&B run back, as ``wandb sync`` would: its ``run-<id>.wandb`` file.

wandb keeps no Python reader for it any more (wandb-core writes it), so this is the
format as wandb's old ``sdk/internal/datastore.py`` documented it: a 7-byte file header
(``:W&B``, magic 0xBEE1, version 0), then 32 KiB blocks of LevelDB-log records (CRC32 4
bytes, length 2, type 1: full, first, middle, last), each payload a serialised ``Record``.
"""

import json
import struct
import time
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes):
    assert data[:4] == b":W&B", "not a W&B run file"
    offset, pending = HEADER, b""
    while offset + HEADER <= len(data):
        left = BLOCK - offset % BLOCK
        if left < HEADER:  # the block's tail is padding
            offset += left
            continue
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
        elif kind == 0 and length == 0:  # zero padding at the end of the file
            break


def read_run(path: Path) -> dict:
    """{"project", "name", "config": {key: value}, "history": [{key: value}]} of a run file."""
    from wandb.proto import wandb_internal_pb2

    out: dict = {"project": None, "name": None, "config": {}, "history": []}
    for payload in _payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["project"], out["name"] = record.run.project, record.run.display_name
        elif kind == "config":
            for item in record.config.update:
                out["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return out


def read_finished_run(path: Path, timeout_s: float = 20.0) -> dict:
    """``read_run`` once the file holds the run's own record. wandb-core, a process of its
    own, writes the file; in offline mode ``finish()`` can return before its last records
    reach the disk on a loaded machine (seen once in CI: no run record at all), so the reader
    waits for them, up to ``timeout_s``, and then returns what is there."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = read_run(path)
        if run["project"] is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)

"""Reading TensorBoard event files back, as a user's TensorBoard would."""

from pathlib import Path


def read_events(logs: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the scalars, and {tag: [(step, width)]} of the images, in
    every event file under ``logs``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[tuple[int, float]]] = {}
    for folder in sorted({p.parent for p in Path(logs).rglob("events.out.tfevents.*")}):
        reader = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
        reader.Reload()
        for tag in reader.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in reader.Scalars(tag))
        for tag in reader.Tags()["images"]:
            out.setdefault(tag, []).extend((e.step, e.width) for e in reader.Images(tag))
    return out

"""COCO captions as an evaluation set: the files a user downloads from cocodataset.org.

- the captions annotation JSON (``annotations/captions_val2014.json``): ``images`` (``id``,
  ``file_name``) and ``annotations`` (``id``, ``image_id``, ``caption``), five or so per image;
- the image folder (``val2014/``), holding each image under its ``file_name``.

``read_coco_captions`` loads and validates the JSON (a missing file, bad JSON, a missing key,
a caption naming an image the file does not list: each an error naming the file and the key).
It is the one reader of COCO's captions files: the evaluation set's (``captions_val2014.json``)
and Table 3's few-shot examples' (``captions_train2014.json``, through
``benchmarks.vqa.load_coco_captions``, which needs no ``images`` list).
``sample_ids`` draws a seeded sample of the images that have captions: the same file, size
and seed give the same images, so a rerun and every captioner see them, and a larger sample
holds every smaller one. The ids are written down (the catalog's ``eval_set_ids``, see
``ids_record``); ``differs_from`` says when a set drawn with the same settings is not the one
written down last time (the captions file changed). ``CocoPixels`` reads an image
at a time under the reading policy of every other source (``imaging/reading.py``: regular
files only, a byte cap, no symbolic link followed unless allowed, and never out of the folder)
and normalises it as ingest does (``decode_normalised``: RGB, shorter side to the resolution,
centre crop). An image's reference caption is its first caption (lowest annotation id).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from vlv_pipeline.benchmarks.json_files import parse_json, read_input
from vlv_pipeline.errors import InputError, MissingInputError, ParameterError
from vlv_pipeline.imaging.checks import ImageRejected, decode_normalised
from vlv_pipeline.imaging.reading import ReadPolicy, inside, read_file, ref_path
from vlv_pipeline.params.evaluate import COCO_DOWNLOAD_HINT

logger = logging.getLogger(__name__)

#: The captions file of COCO 2014 val is about 7 MB; no annotation file needs more than this.
MAX_ANNOTATION_BYTES = 512 * 1024 * 1024


@dataclass
class CocoCaptions:
    """``files``: image id -> file name; ``captions``: image id -> its captions, by
    annotation id. Only images with at least one caption are in ``captions``."""

    path: Path
    files: dict[int, str]
    captions: dict[int, list[str]] = field(default_factory=dict)
    digest: str = ""  # sha256 of the file's bytes (its first 16 hex digits)

    def ids(self) -> list[int]:
        """The ids of the images that have captions, ascending."""
        return sorted(self.captions)

    def reference(self, image_id: int) -> str:
        return self.captions[image_id][0]


def _fail(path: Path, where: str, problem: str) -> InputError:
    return InputError(f"{path}: {where} {problem} (is it COCO's captions_*.json?)")


def read_coco_captions(
    path: str | os.PathLike, *, need_images: bool = True, hint: str = COCO_DOWNLOAD_HINT
) -> CocoCaptions:
    """The captions annotation file at ``path``, validated (see the module docstring).

    ``need_images``: the file must list its ``images`` (an evaluation set reads their files);
    without it, an ``images`` list is still checked when there, and otherwise each caption's
    ``image_id`` need only be an integer (``files`` is then empty). ``hint``: what the
    message for a missing file says to do."""
    path = Path(path)
    data = read_input(
        path, MAX_ANNOTATION_BYTES, missing=f"no COCO captions file at {path}: {hint}"
    )
    document = parse_json(data, str(path))
    if not isinstance(document, dict):
        raise _fail(path, "the top level", f"is a {type(document).__name__}, not an object")
    listed = need_images or "images" in document
    for key in ("images", "annotations") if listed else ("annotations",):
        if not isinstance(document.get(key), list):
            problem = "is missing" if key not in document else "is not a list"
            raise _fail(path, f"key {key!r}", problem)
    files: dict[int, str] = {}
    for i, image in enumerate(document["images"] if listed else ()):
        where = f"images[{i}]"
        if not isinstance(image, dict):
            raise _fail(path, where, "is not an object")
        image_id, name = image.get("id"), image.get("file_name")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise _fail(path, f"{where}.id", f"is {image_id!r}, not an integer")
        if not isinstance(name, str) or ref_path("", name) is None:
            raise _fail(path, f"{where}.file_name", f"is {name!r}, not a relative file name")
        if image_id in files:
            raise _fail(path, f"{where}.id", f"{image_id} is listed twice")
        files[image_id] = name
    found: dict[int, list[tuple[int, str]]] = {}
    for i, note in enumerate(document["annotations"]):
        where = f"annotations[{i}]"
        if not isinstance(note, dict):
            raise _fail(path, where, "is not an object")
        image_id, caption = note.get("image_id"), note.get("caption")
        if not isinstance(caption, str):
            raise _fail(path, f"{where}.caption", f"is {caption!r}, not a string")
        if listed and image_id not in files:
            raise _fail(path, f"{where}.image_id", f"{image_id!r} is not in `images`")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise _fail(path, f"{where}.image_id", f"is {image_id!r}, not an integer")
        order = note.get("id", i)
        if not isinstance(order, int) or isinstance(order, bool):
            raise _fail(path, f"{where}.id", f"is {order!r}, not an integer")
        found.setdefault(image_id, []).append((order, caption))
    captions: dict[int, list[str]] = {}
    for image_id, items in found.items():
        texts = [c.strip() for _, c in sorted(items, key=lambda item: item[0])]
        if any(texts):
            captions[image_id] = [t for t in texts if t]
    return CocoCaptions(path, files, captions, hashlib.sha256(data).hexdigest()[:16])


def sample_ids(coco: CocoCaptions, size: int, seed: int) -> list[int]:
    """``size`` ids of images with captions, returned ascending: the first ``size`` of the
    ascending ids shuffled by ``random.Random(seed)``. So a larger sample holds every smaller
    one of the same seed (captions journaled for 1K images serve the 30K run)."""
    ids = coco.ids()
    if size > len(ids):
        raise ParameterError(
            f"evaluate.coco.sample is {size} but {coco.path} has {len(ids)} images with "
            "captions; lower it"
        )
    random.Random(seed).shuffle(ids)
    return sorted(ids[:size])


def ids_record(coco: CocoCaptions, ids: Sequence[int], size: int, seed: int) -> dict:
    """What the catalog's ``eval_set_ids`` keeps for a COCO sample."""
    return {
        "source": "coco",
        "annotations": str(coco.path),
        "sample": size,
        "seed": seed,
        "image_ids": [str(i) for i in ids],
        "files": [coco.files[i] for i in ids],
    }


def differs_from(record: dict, previous: dict | None) -> str | None:
    """Why the evaluation set ``record`` describes is not the one ``previous`` (the latest
    ``eval_set_ids``) wrote down for the same source and settings, or None (the same, or
    drawn another way, which the run's parameters say)."""
    if not isinstance(previous, dict):
        return None
    keys = ("source", "annotations", "sample", "seed", "split", "images")
    if any(record.get(k) != previous.get(k) for k in keys):
        return None
    before, now = list(previous.get("image_ids") or []), record["image_ids"]
    if before == now:
        return None
    gone = len(set(before) - set(now))
    return (
        f"{gone or 'some'} of the {len(before)} images the last run evaluated with the same "
        "settings are not in this run's set: its source changed since, so the two runs' "
        "numbers are not comparable"
    )


def coco_policy(max_file_bytes: int, follow_links: bool) -> ReadPolicy:
    return ReadPolicy(max_bytes=max_file_bytes, follow_links=follow_links, allow_outside=False)


def image_paths(folder: str | os.PathLike, files: Sequence[str], policy: ReadPolicy) -> list[str]:
    """The path of every file under ``folder``, each checked from its metadata as
    ``read_file`` will check it (there, a regular file, under the byte cap, not a link unless
    ``policy.follow_links``, and then not to a file outside the folder), so a bad file stops
    the run before anything is captioned or rendered; the error names the first few."""
    import stat

    folder = Path(folder)
    if not folder.is_dir():
        raise MissingInputError(f"no COCO image folder at {folder}: {COCO_DOWNLOAD_HINT}")
    paths: list[str] = []
    problems: dict[str, list[str]] = {}
    for name in files:
        path = ref_path(folder, name)
        paths.append(path or "")
        try:
            st = os.stat(path, follow_symlinks=False) if path else None
        except OSError:
            st = None
        if st is None:
            problems.setdefault("have no file", []).append(name)
            continue
        if stat.S_ISLNK(st.st_mode):
            if not policy.follow_links:
                problems.setdefault("are symbolic links (evaluate.coco.follow_links)", []).append(
                    name
                )
                continue
            if not inside(folder, path):
                problems.setdefault("are links to files outside the folder", []).append(name)
                continue
            try:
                st = os.stat(path)
            except OSError:
                problems.setdefault("are broken links", []).append(name)
                continue
        if not stat.S_ISREG(st.st_mode):
            problems.setdefault("are not regular files", []).append(name)
        elif policy.max_bytes is not None and st.st_size > policy.max_bytes:
            problems.setdefault(
                f"are larger than evaluate.coco.max_file_bytes ({policy.max_bytes})", []
            ).append(name)
    if problems:
        lines = [
            f"{len(names)} {what} (e.g. {', '.join(names[:3])})" for what, names in problems.items()
        ]
        error = MissingInputError if list(problems) == ["have no file"] else InputError
        raise error(
            f"of the {len(files)} sampled COCO images in {folder}, "
            + "; ".join(lines)
            + f": nothing was read. The folder must hold every image the captions file lists "
            f"({COCO_DOWNLOAD_HINT})"
        )
    return paths


class CocoPixels(Dataset):
    """Item ``i``: the image at ``paths[i]`` as uint8 ``(3, S, S)``, read under ``policy`` and
    normalised to ``resolution`` as ingest normalises (``decode_normalised``)."""

    def __init__(self, paths: Sequence[str], resolution: int, policy: ReadPolicy) -> None:
        self.paths = list(paths)
        self.resolution = resolution
        self.policy = policy

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.paths[i]
        data, refusal = read_file(path, self.policy)
        if refusal is not None:
            raise InputError(f"{path}: not read ({refusal[0]}: {refusal[1]})")
        try:
            image = decode_normalised(data, self.resolution)
        except ImageRejected as error:
            raise InputError(f"{path}: not a usable image ({error})") from error
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()


def write_coco_set(
    folder: str | os.PathLike, images: Sequence[tuple[object, Sequence[str]]], first_id: int = 1
) -> tuple[Path, Path]:
    """A COCO-format set in ``folder``: ``annotations/captions_val2014.json`` and
    ``val2014/COCO_val2014_<id>.jpg`` for each ``(PIL image, captions)``. For tests and the
    rehearsal: the layout a COCO download unzips to. Returns (annotations file, image folder)."""
    folder = Path(folder)
    image_dir, notes_dir = folder / "val2014", folder / "annotations"
    image_dir.mkdir(parents=True, exist_ok=True)
    notes_dir.mkdir(parents=True, exist_ok=True)
    document: dict = {"info": {}, "licenses": [], "images": [], "annotations": []}
    for offset, (image, captions) in enumerate(images):
        image_id = first_id + offset
        name = f"COCO_val2014_{image_id:012d}.jpg"
        image.convert("RGB").save(image_dir / name, quality=95)
        width, height = image.size
        document["images"].append(
            {"id": image_id, "file_name": name, "width": width, "height": height}
        )
        for caption in captions:
            note_id = len(document["annotations"]) + 1
            document["annotations"].append(
                {"id": note_id, "image_id": image_id, "caption": caption}
            )
    annotations = notes_dir / "captions_val2014.json"
    annotations.write_text(json.dumps(document))
    return annotations, image_dir

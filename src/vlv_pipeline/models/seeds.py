"""Per-image noise: every image a render is made of draws its noise from its own generator,
seeded from the run's ``sampling.seed`` and the image's index, so that its render does not
depend on the batch size, on the other images in its batch, nor on how the images are
shared among ranks (``evaluate``, ``rerender``, ``reconstruct``)."""

from __future__ import annotations

import hashlib

import torch


def image_seed(seed: int, index: int) -> int:
    """The noise seed of image ``index`` under ``sampling.seed``: the first 8 bytes of
    sha256("<seed>:<index>") (little-endian), less the sign bit."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def image_generators(seed: int, indices) -> list[torch.Generator]:
    """One CPU generator per image, seeded with ``image_seed(seed, index)``."""
    return [torch.Generator().manual_seed(image_seed(seed, i)) for i in indices]

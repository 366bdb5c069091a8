"""Facts about a module's weights that loading and saving code needs."""

from __future__ import annotations

from torch import nn


def tied_names(module: nn.Module) -> set[str]:
    """State-dict names that share their tensor with an earlier name (an LLM's ``lm_head``
    tied to its embeddings): safetensors files store such a tensor once, and filling the
    first name fills them all."""
    seen: set[int] = set()
    tied = set()
    for name, tensor in module.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            tied.add(name)
        seen.add(id(tensor))
    return tied

"""How a parameter names one model component: :class:`ComponentSpec`.

Every component in ``conf/`` is either ``pretrained: <hub id or local save_pretrained dir>``
(optionally ``subfolder`` and ``dtype``) or ``init: {...config...}`` (built at random).
``models/registry.py`` turns a spec into the library's object; this module only describes
and validates it, so parameter models can hold specs without importing torch.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

__all__ = ["DTYPE_NAMES", "ComponentSpec", "looks_local"]

DTYPE_NAMES = ("float32", "float16", "bfloat16")  # the dtype names conf may give (`dtype:`)
# Prefixes that can only be a local path, never a hub id ("org/name").
_LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "data/", "file:")


def looks_local(ref: str) -> bool:
    """A reference that cannot be a hub id ``name`` or ``org/name``."""
    return ref.startswith(_LOCAL_PREFIXES) or ref in {".", ".."} or ref.count("/") > 1


class ComponentSpec(BaseModel):
    """How to obtain one component: exactly one of ``pretrained`` or ``init``."""

    model_config = ConfigDict(extra="forbid")

    pretrained: str | None = None
    subfolder: str | None = None
    # None: float32 weights. transformers 5 would otherwise keep the dtype a checkpoint was
    # saved in (bf16 for Qwen2.5), and a model trained from it would have no fp32 master
    # weights under mixed precision
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    init: dict[str, Any] | None = None

    @field_validator("pretrained", mode="before")
    @classmethod
    def _path_to_str(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _one_source(self) -> ComponentSpec:
        if (self.pretrained is None) == (self.init is None):
            got = "both" if self.pretrained is not None else "neither"
            raise ValueError(
                f"give exactly one of 'pretrained' (hub id or local directory) or 'init' "
                f"(a config to build a fresh model); got {got}"
            )
        if self.subfolder is not None and self.init is not None:
            raise ValueError("'subfolder' only applies with 'pretrained', not with 'init'")
        return self

"""Teachers: frozen text-to-image models of several families behind one interface.

``load_teacher(pretrained)`` reads the directory's (or hub repo's) ``model_index.json`` and
returns the family's :class:`Teacher`; the ``t2i`` global stays the one place a user names
the teacher. A new family: subclass ``Teacher`` in ``families.py`` and add it to
``FAMILIES``.
"""

from __future__ import annotations

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.models.registry import load_component
from vlv_pipeline.models.teachers.base import Condition, Teacher
from vlv_pipeline.models.teachers.families import (
    FluxTeacher,
    StableDiffusion3Teacher,
    StableDiffusionTeacher,
    StableDiffusionXLTeacher,
)

__all__ = [
    "FAMILIES",
    "Condition",
    "call_kwargs_of",
    "Teacher",
    "family_named",
    "family_of",
    "load_text_side",
    "load_teacher",
    "text_side",
]

FAMILIES: tuple[type[Teacher], ...] = (
    StableDiffusionTeacher,
    StableDiffusionXLTeacher,
    StableDiffusion3Teacher,
    FluxTeacher,
)


def _index(pretrained: str) -> dict:
    return load_component("pipeline_index", {"pretrained": pretrained})


def family_of(pretrained: str) -> type[Teacher]:
    """The teacher class for a diffusers directory or hub id, from its ``model_index.json``."""
    return _family(pretrained, _index(pretrained))


def _family(pretrained: str, index: dict) -> type[Teacher]:
    return family_named(index.get("_class_name"), f"t2i {pretrained}: its model_index.json")


def family_named(name: str | None, where: str = "the teacher") -> type[Teacher]:
    """The family whose pipeline class is ``name`` (e.g. ``StableDiffusionXLPipeline``)."""
    for family in FAMILIES:
        if name in family.pipeline_classes:
            return family
    known = [n for f in FAMILIES for n in f.pipeline_classes]
    raise ParameterError(
        f"{where} names {name!r}, not a teacher family this project knows "
        f"({', '.join(known)}); point t2i at one of those"
    )


def load_teacher(pretrained: str, dtype: str | None = "float32", device=None) -> Teacher:
    """The frozen teacher at ``pretrained`` (hub id or local directory), on ``device``."""
    index = _index(pretrained)
    return _family(pretrained, index).load(pretrained, dtype, device, index)


def load_text_side(pretrained: str, dtype: str | None = "float32", device=None) -> Teacher:
    """Only the text encoders the VLV queries feed (what ``condition`` needs: stage 2,
    synthesis and the captioner never load the denoiser or the VAE)."""
    index = _index(pretrained)
    family = _family(pretrained, index)
    return family.load(pretrained, dtype, device, index, only=family.fed_encoders)


def call_kwargs_of(pretrained: str) -> dict:
    """The family's arguments to each pipeline call for the model at ``pretrained`` (from its
    ``model_index.json``, nothing loaded): what a caption render through a pipeline loaded
    another way (``DiffusionPipeline.from_pretrained``) passes, as ``Teacher.render_captions``
    does. An SD 3 built without T5 (the shapes world's flow teacher) reads no T5 positions."""
    index = _index(pretrained)
    return _family(pretrained, index)(str(pretrained), {}, index).call_kwargs()


def text_side(text_encoder) -> Teacher:
    """A teacher's text side as is, or a bare CLIP text encoder as the text side of a
    Stable Diffusion teacher (captioners saved and built before teacher families)."""
    if isinstance(text_encoder, Teacher):
        return text_encoder
    name = getattr(text_encoder.config, "_name_or_path", "") or "a CLIP text encoder"
    return StableDiffusionTeacher(name, {"text_encoder": text_encoder})

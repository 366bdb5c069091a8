"""What every teacher family gives VLV: conditioning, a training objective and two samplers.

A teacher is a frozen text-to-image model loaded from its diffusers directory (the project's
own shapes-world teacher, or a hub repo in conf/paper). Stage 1, evaluation, the study and
reconstruction need four things from it, and nothing else:

* ``condition(embeddings)``: the VLV encoder's caption embeddings -> the denoiser's
  conditioning (a :class:`Condition`: the sequence it attends to, and a pooled vector where
  the family has one);
* ``loss(latents, condition)``: the family's training objective at sampled timesteps
  (noise prediction for SD 1/2 and SDXL, the rectified-flow velocity for SD 3 and FLUX);
* ``render(condition)``: the family's sampler, from embeddings;
* ``render_captions(captions)``: the same sampler, from text.

One subclass per family (``families.py``), picked from the directory's ``model_index.json``
(``load_teacher``). Shared here: loading and freezing the parts, latent scaling, batching,
classifier-free guidance against the empty prompt, and the render loop.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vlv_pipeline.errors import ParameterError
from vlv_pipeline.models.registry import load_component


def flow_matching_scheduler(name: str) -> bool:
    """Whether the diffusers scheduler class ``name`` is a flow-matching one (SD 3's, FLUX's)."""
    return name.startswith("FlowMatch")


@dataclass
class Condition:
    """What a teacher's denoiser reads for a batch: ``states`` (B, L, D), the sequence it
    attends to, and ``pooled`` (B, P) where the family has a pooled text vector."""

    states: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.states.shape[0]

    def __getitem__(self, index: slice) -> Condition:
        return Condition(self.states[index], None if self.pooled is None else self.pooled[index])

    def repeat_interleave(self, n: int) -> Condition:
        pooled = None if self.pooled is None else self.pooled.repeat_interleave(n, dim=0)
        return Condition(self.states.repeat_interleave(n, dim=0), pooled)

    def expand(self, n: int) -> Condition:
        """A batch of one, repeated ``n`` times (the empty prompt beside ``n`` images)."""
        pooled = None if self.pooled is None else self.pooled.expand(n, -1)
        return Condition(self.states.expand(n, -1, -1), pooled)

    def to(self, *args, **kwargs) -> Condition:
        pooled = None if self.pooled is None else self.pooled.to(*args, **kwargs)
        return Condition(self.states.to(*args, **kwargs), pooled)

    @staticmethod
    def cat(conditions: list[Condition]) -> Condition:
        pooled = [c.pooled for c in conditions]
        return Condition(
            torch.cat([c.states for c in conditions]),
            None if any(p is None for p in pooled) else torch.cat(pooled),
        )

    def pipeline_inputs(self, negative: Condition | None = None) -> dict:
        """The keyword arguments a diffusers text-to-image pipeline takes for it."""
        inputs = {"prompt_embeds": self.states}
        if self.pooled is not None:
            inputs["pooled_prompt_embeds"] = self.pooled
        if negative is not None:
            negative = negative.expand(len(self))
            inputs["negative_prompt_embeds"] = negative.states
            if negative.pooled is not None:
                inputs["negative_pooled_prompt_embeds"] = negative.pooled
        return inputs


class Teacher(nn.Module, ABC):
    """A frozen text-to-image model as VLV's decoder. Subclasses name their family's
    pipeline classes, the parts to load (subfolder -> registry kind) and which text
    encoders the VLV queries feed; they implement the four methods of the module doc."""

    family: ClassVar[str]
    pipeline_classes: ClassVar[tuple[str, ...]]  # model_index.json `_class_name`s it reads
    parts: ClassVar[dict[str, str]]  # subfolder -> registry kind
    fed_encoders: ClassVar[tuple[str, ...]]  # the text encoders the VLV queries feed
    denoiser_name: ClassVar[str] = "unet"
    training_scheduler: ClassVar[str] = "DDPMScheduler"  # what training draws noise levels from
    uses_negative: ClassVar[bool] = True  # classifier-free guidance against the empty prompt
    optional_parts: ClassVar[tuple[str, ...]] = ()  # parts a directory may declare as null

    def __init__(self, pretrained: str, components: dict, index: dict | None = None):
        super().__init__()
        self.pretrained = pretrained
        self.index = dict(index or {})  # the directory's model_index.json
        for name, component in components.items():
            setattr(self, name, component)  # nn.Modules register; tokenizers, schedulers not
        self.requires_grad_(False).eval()

    @classmethod
    def load(
        cls,
        pretrained: str,
        dtype: str | None = "float32",
        device=None,
        index: dict | None = None,
        only: tuple[str, ...] | None = None,
    ) -> Teacher:
        """The family's parts from ``pretrained``; ``only`` a subset of them (the text side
        that ``condition`` needs: ``fed_encoders``)."""
        no_dtype = {"tokenizer", "scheduler"}
        components = {}
        for subfolder, kind in cls.parts.items():
            if only is not None and subfolder not in only:
                continue
            if subfolder in cls.optional_parts and _absent(index, subfolder):
                components[subfolder] = None  # built without it (SD 3 without T5)
                continue
            spec = {"pretrained": pretrained, "subfolder": subfolder}
            if dtype and kind not in no_dtype:
                spec["dtype"] = dtype
            components[subfolder] = load_component(kind, spec)
        teacher = cls(str(pretrained), components, index)
        return teacher.to(device) if device is not None else teacher

    @classmethod
    def from_pipeline(cls, pipeline, name: str = "an in-memory pipeline") -> Teacher:
        """The teacher over an assembled diffusers pipeline's parts (the `teacher` pipeline
        judges what it just trained through the family's own samplers)."""
        components = {part: getattr(pipeline, part, None) for part in cls.parts}
        index = {
            "_class_name": type(pipeline).__name__,
            **{
                part: None if c is None else [type(c).__module__.split(".")[0], type(c).__name__]
                for part, c in components.items()
            },
        }
        return cls(name, components, index)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # frozen: never switches to training behaviour

    # ------------------------------------------------------------------ shared facts

    @property
    def denoiser(self) -> nn.Module:
        """The UNet (SD 1/2, SDXL) or the transformer (SD 3, FLUX)."""
        return getattr(self, self.denoiser_name)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along a side."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def denoiser_condition(self, condition: Condition) -> Condition:
        """What the denoiser reads for ``condition`` (SD 3 adds T5's part here)."""
        return condition

    @property
    def native_resolution(self) -> int:
        """The side the denoiser was built for (its ``sample_size`` in pixels)."""
        return int(self.denoiser.config.sample_size) * self.vae_scale_factor

    def _fed(self) -> list:
        return [getattr(self, name) for name in self.fed_encoders]

    def text_encoders(self) -> list[nn.Module]:
        """The text encoders the VLV queries feed, in order (what ``condition`` runs)."""
        return self._fed()

    @property
    def widths(self) -> list[int]:
        """The input width of each text encoder the VLV queries feed, in order."""
        return [int(e.get_input_embeddings().weight.shape[1]) for e in self._fed()]

    @property
    def width(self) -> int:
        """The width of caption embeddings: the fed encoders' input widths, concatenated
        (each encoder reads its own slice of the features)."""
        return sum(self.widths)

    @property
    def token_embeddings(self) -> torch.Tensor | None:
        """The fed encoders' token tables side by side, (vocabulary, width): a mixture over
        it is the same token in every encoder (None when their vocabularies differ)."""
        tables = [e.get_input_embeddings().weight for e in self._fed()]
        if len({t.shape[0] for t in tables}) > 1:
            return None
        return torch.cat(tables, dim=1)

    def split(self, embeddings: torch.Tensor) -> list[torch.Tensor]:
        """Caption embeddings -> one slice per fed text encoder, on its device and dtype."""
        if embeddings.shape[-1] != self.width:
            raise ParameterError(
                f"caption embeddings are {embeddings.shape[-1]} wide; this teacher "
                f"({self.pretrained}) reads {self.width} ({' + '.join(map(str, self.widths))}: "
                f"{', '.join(self.fed_encoders)}). Train stage 1 against this teacher"
            )
        out = []
        for encoder, part in zip(self._fed(), embeddings.split(self.widths, -1), strict=True):
            weight = encoder.get_input_embeddings().weight
            out.append(part.to(weight.device, weight.dtype))
        return out

    @functools.cached_property
    def noise_scheduler(self):
        """The training form of the teacher's scheduler, from its config (same betas,
        prediction type or shift): DDPM for noise prediction, whatever sampler the directory
        ships with, as diffusers' training scripts load it; flow matching's own class,
        without ``set_timesteps``, for SD 3 and FLUX."""
        import diffusers

        return getattr(diffusers, self.training_scheduler).from_config(self.scheduler.config)

    def latents(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """A draw from a cached VAE posterior, shifted and scaled as the denoiser reads it."""
        return (mean + std * torch.randn_like(std) - self.shift_factor) * self.scaling_factor

    # ------------------------------------------------------------------ per family

    @abstractmethod
    def condition(self, embeddings: torch.Tensor) -> Condition:
        """Caption embeddings (B, N, width) -> the denoiser's conditioning."""

    @property
    @abstractmethod
    def condition_width(self) -> int:
        """The feature width of ``condition(...).states``: what stage 2's psi reads."""

    @abstractmethod
    def empty_condition(self, length: int) -> Condition:
        """The empty prompt's conditioning, ``length`` positions where that is defined."""

    @abstractmethod
    def loss(
        self,
        latents: torch.Tensor,
        condition: Condition,
        timestep_range: tuple[int, int] | None = None,
        stratified: bool = False,
    ) -> torch.Tensor:
        """The family's training objective on scaled latents at sampled timesteps."""

    def pipeline(self):
        """The family's diffusers pipeline (its ``pipeline_classes[0]``) over these frozen,
        in-memory parts; a part not loaded (a text side's denoiser) is None."""
        import diffusers

        cls = getattr(diffusers, self.pipeline_classes[0])
        parts = {name: getattr(self, name, None) for name in self.parts}
        return cls(**parts, **self.pipeline_kwargs())

    def pipeline_kwargs(self) -> dict:
        """The family's pipeline arguments beyond its parts."""
        return {}

    def call_kwargs(self) -> dict:
        """The family's arguments to each pipeline call beyond prompts and sampling."""
        return {}

    def sampler_used(self, name: str | None) -> str:
        """The sampler a render asked for ``name`` samples with: the teacher's own for None,
        and for a noise-prediction name on a flow-matching teacher (which keeps its own,
        ``models.teacher._scheduler``); ``name`` otherwise. What metrics record."""
        own = type(self.scheduler).__name__
        if name is None or (flow_matching_scheduler(own) and not flow_matching_scheduler(name)):
            return own
        return name

    # ------------------------------------------------------------------ shared use

    @torch.no_grad()
    def condition_images(self, encoder, pixels: torch.Tensor, batch_size: int) -> Condition:
        """Images -> VLV encoder -> conditioning, in batches, on the teacher's device."""
        device = self.device
        encoder = encoder.eval().to(device)
        return Condition.cat(
            [
                self.condition(encoder(pixels[i : i + batch_size].to(device)))
                for i in range(0, len(pixels), batch_size)
            ]
        )

    def render(self, conditions: Condition, *, guidance: float, **kwargs) -> torch.Tensor:
        """Images in [-1, 1] from conditionings; CFG against the empty prompt."""
        from vlv_pipeline.models.teacher import render

        if isinstance(conditions, torch.Tensor):
            conditions = Condition(conditions)
        negative = None
        if guidance > 1 and self.uses_negative:
            negative = self.denoiser_condition(self.empty_condition(conditions.states.shape[1]))
        return render(
            self.pipeline(),
            conditions=self.denoiser_condition(conditions),
            negative=negative,
            guidance=guidance,
            call_kwargs=self.call_kwargs(),
            **kwargs,
        )

    def render_captions(self, captions: list[str], **kwargs) -> torch.Tensor:
        from vlv_pipeline.models.teacher import render

        return render(self.pipeline(), captions=captions, call_kwargs=self.call_kwargs(), **kwargs)


def _absent(index: dict | None, part: str) -> bool:
    """Whether ``model_index.json`` declares ``part`` as null (``[null, null]``)."""
    index = index or {}
    if part not in index:
        return False
    entry = index[part]
    return entry is None or (isinstance(entry, (list, tuple)) and not any(entry))

"""The attribute probe: a small CNN that reads a shapes-world scene from an image.

It is the shapes world's judge (the role Inception features play behind FID): per grid
cell it predicts empty-or-shape, colour and size. It learns from the world's ground truth
labels, so it must never initialise or teach a VLV model, only score its outputs.
Saved as a diffusers-style model directory (config.json + safetensors).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from vlv_pipeline.world.scene import N_CELLS, SceneObject


class AttributeProbe(ModelMixin, ConfigMixin):
    """Images in [-1, 1] (B, 3, S, S) -> per-cell logits for shape (+empty), colour, size."""

    @register_to_config
    def __init__(
        self,
        shapes: tuple[str, ...] = ("circle", "square", "triangle"),
        colours: tuple[str, ...] = ("red", "green", "blue", "yellow"),
        sizes: tuple[str, ...] = ("small", "large"),
        image_size: int = 32,
        width: int = 32,
        hidden: int = 256,
    ):
        super().__init__()
        self.n_shape, self.n_colour, self.n_size = len(shapes) + 1, len(colours), len(sizes)
        layers, channels, side = [], 3, image_size
        for mult in (1, 2, 4):
            out = width * mult
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.GELU()]
            layers += [nn.Conv2d(out, out, 3, stride=2, padding=1), nn.GELU()]
            channels, side = out, (side + 1) // 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(channels * side * side, hidden), nn.GELU())
        self.head = nn.Linear(hidden, N_CELLS * (self.n_shape + self.n_colour + self.n_size))

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (used for a Frechet distance between image sets)."""
        return self.embed(self.features(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits = self.head(self.embedding(images)).view(images.shape[0], N_CELLS, -1)
        return logits.split([self.n_shape, self.n_colour, self.n_size], dim=-1)

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``targets`` (B, 9, 3) long: shape index (0 = empty, else 1 + shape id), colour, size."""
        shape, colour, size = self(images)
        loss = F.cross_entropy(shape.flatten(0, 1), targets[..., 0].flatten())
        occupied = targets[..., 0].flatten() > 0
        if occupied.any():
            loss = loss + F.cross_entropy(
                colour.flatten(0, 1)[occupied], targets[..., 1].flatten()[occupied]
            )
            loss = loss + F.cross_entropy(
                size.flatten(0, 1)[occupied], targets[..., 2].flatten()[occupied]
            )
        return loss

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 9, 3) long predictions in the ``targets`` layout."""
        shape, colour, size = self(images)
        return torch.stack([shape.argmax(-1), colour.argmax(-1), size.argmax(-1)], dim=-1)

    def encode_scene(self, objects: list[SceneObject]) -> torch.Tensor:
        """A scene as a (9, 3) target tensor."""
        from vlv_pipeline.world.data import scene_targets

        cfg = self.config
        rows = [
            {"cell": o.cell, "shape": o.shape, "colour": o.colour, "size": o.size} for o in objects
        ]
        return scene_targets(rows, cfg.shapes, cfg.colours, cfg.sizes)

    def decode_scene(self, cells: torch.Tensor) -> list[SceneObject]:
        """A (9, 3) prediction back to scene objects."""
        cfg = self.config
        objects = []
        for cell, (shape, colour, size) in enumerate(cells.tolist()):
            if shape > 0:
                objects.append(
                    SceneObject(cell, cfg.sizes[size], cfg.colours[colour], cfg.shapes[shape - 1])
                )
        return objects


class ProbeObjective(nn.Module):
    """The probe's training objective for the shared loop, with light augmentation."""

    def __init__(self, probe: AttributeProbe, noise_std: float = 0.05):
        super().__init__()
        self.probe = probe
        self.noise_std = noise_std

    def forward(self, batch) -> torch.Tensor:
        images, targets = batch
        if self.noise_std:
            images = images + self.noise_std * torch.randn_like(images)
        return self.probe.loss(images, targets)

    def trained_models(self) -> dict[str, nn.Module]:
        return {"probe": self.probe}


def caption_targets(captions: list[str | None], probe: AttributeProbe) -> torch.Tensor:
    """The scenes that the (exact) shapes-world captions describe, in the probe's layout."""
    from vlv_pipeline.world.scene import CaptionParser, Vocabulary

    cfg = probe.config
    parser = CaptionParser(Vocabulary(tuple(cfg.shapes), tuple(cfg.colours), tuple(cfg.sizes)))
    return torch.stack([probe.encode_scene(parser.parse(c or "").objects) for c in captions])

"""The VLV encoder: image -> N continuous caption embeddings of the T2I text encoder's width.

Both backbones share one shape: a vision backbone gives image tokens, N learnable queries
are decoded against them, and the projector phi (Linear, GELU, Linear) maps the decoded
queries to caption embeddings. Those enter the frozen CLIP text encoder as
``inputs_embeds`` (see ``models/text_encoder.py``).

- ``SmallVLVEncoder``: trained from scratch for the shapes world (a small CNN over pixels,
  a transformer over its feature-map cells, a query decoder).
- ``Florence2VLVEncoder``: the paper's encoder. Florence-2's DaViT vision tower (frozen) and
  its BART-style encoder-decoder (trainable); the image tokens plus the prompt go into the
  encoder, the N queries into the decoder as ``inputs_embeds``; lm_head unused (frozen).

Both are diffusers ``ModelMixin``s, so ``save_pretrained``/``from_pretrained`` give a
self-describing directory (config.json + safetensors) that stage 2 and inference load. An
encoder's ``provenance`` (what it was trained for: ``models/provenance.py``, set by stage 1)
is saved beside it as ``provenance.json`` and read back on load (None when there is none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from vlv_pipeline.errors import InputError


def pil_bicubic(image: np.ndarray, side: int) -> np.ndarray:
    """An (H, W, 3) uint8 image resized to ``side`` x ``side`` with PIL's bicubic filter, as
    Florence-2's processor (``CLIPImageProcessor``, ``resample: 3``) resizes."""
    from PIL import Image

    resized = Image.fromarray(image).resize((side, side), Image.Resampling.BICUBIC)
    return np.asarray(resized)


class _Recorded:
    """Saves and loads the encoder's ``provenance`` record with its directory."""

    provenance: dict | None = None

    def save_pretrained(self, save_directory, **kwargs) -> None:
        from vlv_pipeline.models.provenance import write_record

        super().save_pretrained(save_directory, **kwargs)
        write_record(save_directory, self.provenance)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        from vlv_pipeline.models.provenance import read_record

        model = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        model.provenance = read_record(pretrained_model_name_or_path)
        return model


def projector(width: int, out_dim: int) -> nn.Sequential:
    """phi: Linear, GELU, Linear (the paper's Linear(1024,1024), GELU, Linear(1024,1024))."""
    return nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, out_dim))


def vae_config_of(vae) -> dict:
    """An AutoencoderKL's architecture config, without where it was loaded from."""
    return {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}


class SmallVLVEncoder(_Recorded, ModelMixin, ConfigMixin):
    """A compact CNN + transformer + query decoder, for the shapes world.

    With ``vae_config`` set, the vision tower is instead the encoder half of an
    ``AutoencoderKL`` of that config (frozen; its posterior mean feeds a 1x1 stem). Stage 1
    initialises it from the T2I model's own VAE: self-supervised weights, no labels, the
    role the paper's frozen DaViT tower plays. ``latent_stem_channels`` then puts 3x3
    convolutions (stride 1) on the latent grid before the 1x1 stem, so that each token sees
    its neighbours before attention (empty: the 1x1 stem alone).
    """

    @register_to_config
    def __init__(
        self,
        num_queries: int = 16,
        out_dim: int = 64,
        image_size: int = 32,
        width: int = 128,
        stem_channels: tuple[int, ...] = (32, 64, 128),
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        heads: int = 4,
        query_init_std: float = 1.0,
        vae_config: dict | None = None,
        vocab_size: int | None = None,
        latent_stem_channels: tuple[int, ...] = (),
    ):
        super().__init__()
        layers, channels, side = [], 3, image_size
        self.vae_tower = None
        if vae_config is not None:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL(**{k: v for k, v in vae_config.items() if not k.startswith("_")})
            # SD 3's and FLUX's VAEs have no quant conv (use_quant_conv: false)
            quant = vae.quant_conv if vae.quant_conv is not None else nn.Identity()
            self.vae_tower = nn.ModuleDict({"encoder": vae.encoder, "quant_conv": quant})
            self.vae_tower.requires_grad_(False)
            channels = vae.config.latent_channels
            side = image_size // 2 ** (len(vae.config.block_out_channels) - 1)
            # a VAE tower already downsampled: its stem keeps the latent grid (stride 1)
            stem_channels = tuple(latent_stem_channels)
        for i, out in enumerate(stem_channels):
            stride = 1 if i == 0 or vae_config is not None else 2
            layers += [
                nn.Conv2d(channels, out, 3, stride=stride, padding=1),
                nn.GroupNorm(8, out),
                nn.GELU(),
            ]
            channels, side = out, (side - 1) // stride + 1
        self.stem = nn.Sequential(*layers, nn.Conv2d(channels, width, 1))
        self.positions = nn.Parameter(torch.randn(1, side * side, width) * 0.02)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
            ),
            encoder_layers,
        )
        self.queries = nn.Parameter(torch.randn(1, num_queries, width) * query_init_std)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(
                width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
            ),
            decoder_layers,
        )
        self.norm = nn.LayerNorm(width)
        if vocab_size is None:
            self.phi = projector(width, out_dim)
            self.vocabulary = None
        else:  # each position is a softmax mixture of the T2I text encoder's word embeddings
            self.phi = projector(width, vocab_size)
            self.register_buffer("vocabulary", torch.zeros(vocab_size, out_dim))

    def load_vocabulary(self, token_embeddings: torch.Tensor) -> None:
        """Copy the frozen text encoder's token-embedding table (vocab_size, out_dim)."""
        self.vocabulary.copy_(token_embeddings.detach())

    def load_vae_tower(self, vae) -> None:
        """Copy an AutoencoderKL's encoder weights into the (frozen) vision tower."""
        self.vae_tower["encoder"].load_state_dict(vae.encoder.state_dict())
        if vae.quant_conv is not None:
            self.vae_tower["quant_conv"].load_state_dict(vae.quant_conv.state_dict())

    @property
    def reads_vae_latents(self) -> bool:
        """True when the vision tower is a VAE encoder: its output is the posterior mean."""
        return self.vae_tower is not None

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [-1, 1] -> (B, num_queries, out_dim) caption embeddings."""
        features = pixel_values
        if self.vae_tower is not None:
            with torch.no_grad():
                moments = self.vae_tower["quant_conv"](self.vae_tower["encoder"](pixel_values))
                features = moments.chunk(2, dim=1)[0]  # the posterior mean
        return self.from_features(features)

    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """The encoder after its frozen vision tower: tower features -> caption embeddings.

        With a VAE tower the features are the VAE's posterior mean, so training can feed
        the latent cache's mean here instead of running the frozen tower every step.
        """
        tokens = self.stem(features).flatten(2).transpose(1, 2) + self.positions
        memory = self.encoder(tokens)
        queries = self.queries.expand(features.shape[0], -1, -1)
        out = self.phi(self.norm(self.decoder(queries, memory)))
        if self.vocabulary is not None:
            out = out.softmax(dim=-1) @ self.vocabulary
        return out


class Florence2VLVEncoder(ModelMixin, ConfigMixin):
    """Florence-2 as the paper uses it (native transformers ``Florence2ForConditionalGeneration``)."""

    provenance: dict | None = None  # what it was trained for (models/provenance.py)

    @register_to_config
    def __init__(
        self,
        florence_config: dict | None = None,
        num_queries: int = 77,
        out_dim: int = 1024,
        prompt_ids: tuple[int, ...] = (),
        image_mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        image_std: tuple[float, float, float] = (0.229, 0.224, 0.225),
        input_size: int | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        from transformers import Florence2Config, Florence2ForConditionalGeneration

        # image_size: the side of the square crops it is fed (the caption pipeline's default;
        # 384 for the published captioner), recorded only

        # the side Florence-2 reads (768 for the published captioner): images are made
        # into what Florence-2's processor gives for them (uint8, PIL bicubic to this side,
        # rescaled, normalised: ``processor_pixels``); None: as given, normalised here
        self.input_size = input_size
        self.florence = Florence2ForConditionalGeneration(
            Florence2Config(**(florence_config or {}))
        )
        width = self.florence.config.text_config.d_model
        self.queries = nn.Parameter(torch.randn(1, num_queries, width) * 0.02)
        self.phi = projector(width, out_dim)
        self.register_buffer(
            "prompt_token_ids", torch.tensor(list(prompt_ids), dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "pixel_mean", torch.tensor(image_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(image_std).view(1, 3, 1, 1), persistent=False
        )
        self.freeze_unused()

    def freeze_unused(self) -> None:
        """Freeze the DaViT tower, its projector into the language model, and the lm_head."""
        model = self.florence.model
        for module in (model.vision_tower, model.multi_modal_projector, self.florence.lm_head):
            module.requires_grad_(False)

    @classmethod
    def from_florence(
        cls,
        florence,
        num_queries: int,
        out_dim: int,
        prompt_ids: list[int],
        input_size: int | None = None,
        image_size: int | None = None,
    ) -> Florence2VLVEncoder:
        """Wrap a loaded Florence-2 (e.g. from the registry's ``florence2`` kind), keeping its weights."""
        config = florence.config.to_dict()
        encoder = cls(
            florence_config=config,
            num_queries=num_queries,
            out_dim=out_dim,
            prompt_ids=tuple(prompt_ids),
            input_size=input_size,
            image_size=image_size,
        )
        encoder.florence.load_state_dict(florence.state_dict())
        encoder.freeze_unused()
        return encoder

    # Florence-2 ties its token embeddings to lm_head, which plain safetensors refuses to
    # save; transformers' own save_pretrained handles that, so the directory holds
    # florence/ (a Florence-2 model directory) + head.safetensors (queries, phi) + config.json.
    def save_pretrained(self, save_directory, **kwargs) -> None:
        from safetensors.torch import save_file

        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.florence.save_pretrained(path / "florence")
        head = {
            k: v.detach().contiguous()
            for k, v in self.state_dict().items()
            if not k.startswith("florence.")
        }
        save_file(head, str(path / "head.safetensors"))
        self.save_config(path)
        from vlv_pipeline.models.provenance import write_record

        write_record(path, self.provenance)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        from transformers import Florence2ForConditionalGeneration

        from vlv_pipeline.models.tensor_files import load_tensors, model_dir_hint, naming_damaged

        path = Path(pretrained_model_name_or_path)
        config = cls.load_config(path)
        with naming_damaged(path / "florence", what_to_do=model_dir_hint(path)):
            florence = Florence2ForConditionalGeneration.from_pretrained(path / "florence")
        encoder = cls.from_florence(
            florence,
            config["num_queries"],
            config["out_dim"],
            config["prompt_ids"],
            config.get("input_size"),
            config.get("image_size"),
        )
        head = load_tensors(path / "head.safetensors", what_to_do=model_dir_hint(path))
        missing, unexpected = encoder.load_state_dict(head, strict=False)
        if unexpected or any(not k.startswith("florence.") for k in missing):
            raise InputError(
                f"{path}/head.safetensors does not match the encoder: {unexpected or missing}"
            )
        from vlv_pipeline.models.provenance import read_record

        encoder.provenance = read_record(path)
        return encoder.eval()

    def processor_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [-1, 1] -> what Florence-2's processor makes of the same
        uint8 images (the official inference hands it uint8 crops): PIL bicubic to
        ``input_size`` square, times 1/255 (in float64, then float32), minus the mean, over
        the std (float32). Bit for bit the processor's output; no gradient flows through."""
        side = self.input_size
        uint8 = ((pixel_values.detach().float() + 1) * 127.5).round().clamp(0, 255)
        uint8 = uint8.to(torch.uint8).cpu()
        if tuple(uint8.shape[-2:]) != (side, side):
            uint8 = torch.from_numpy(
                np.stack([pil_bicubic(image, side) for image in uint8.permute(0, 2, 3, 1).numpy()])
            ).permute(0, 3, 1, 2)
        scaled = (uint8.to(torch.float64) * (1 / 255)).to(torch.float32)
        mean = torch.tensor(self.config.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.config.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((scaled - mean) / std).to(pixel_values.device)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [-1, 1] (normalised here as Florence-2's processor does)."""
        model = self.florence.model
        batch = pixel_values.shape[0]
        if self.input_size is not None:  # the published captioner: exactly the processor
            pixel_values = self.processor_pixels(pixel_values)
        else:  # trained here on images of the right size: differentiable, on the device
            pixel_values = ((pixel_values + 1) / 2 - self.pixel_mean) / self.pixel_std
        pixel_values = pixel_values.to(next(model.vision_tower.parameters()).dtype)
        image_tokens = model.get_image_features(pixel_values).pooler_output
        embed = model.get_input_embeddings()
        prompt = (
            embed(self.prompt_token_ids.to(pixel_values.device)).unsqueeze(0).expand(batch, -1, -1)
        )
        encoder_inputs = torch.cat([image_tokens.to(prompt.dtype), prompt], dim=1)
        encoded = model.language_model.encoder(inputs_embeds=encoder_inputs).last_hidden_state
        queries = self.queries.expand(batch, -1, -1).to(encoded.dtype)
        decoded = model.language_model.decoder(
            inputs_embeds=queries, encoder_hidden_states=encoded
        ).last_hidden_state
        return self.phi(decoded)


ENCODERS = {"small": SmallVLVEncoder, "florence2": Florence2VLVEncoder}


class VLVEncoder:
    """Loads any saved VLV encoder directory (the class is read from its config.json)."""

    @staticmethod
    def from_pretrained(path, **kwargs):
        import json
        from pathlib import Path

        name = json.loads((Path(path) / "config.json").read_text()).get("_class_name")
        classes = {cls.__name__: cls for cls in ENCODERS.values()}
        if name not in classes:
            raise InputError(
                f"{path}: config.json names {name!r}, not a VLV encoder ({sorted(classes)})"
            )
        return classes[name].from_pretrained(path, **kwargs)

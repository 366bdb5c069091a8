"""The authors' published stage-2 captioner, imported into this project's own modules.

The official inference (Tiezheng11/Vision-Language-Vision: ``train/Caption_inference.py``,
``models/VLV_stage2.py``, ``models/VLV_stage1.py``) loads one state dict into its
``CLIPDecoder``. Its keys, and where they go here (``VLVCaptioner``):

==============================================  =========================================
official key                                    here
==============================================  =========================================
``qwen2_model.*`` (Qwen2.5 causal LM)           ``decoder.llm.*``
``mlp.layers.{0,2}.*`` (psi)                    ``decoder.psi.{0,2}.*``
``VLV_model.query_embed`` (1 x 77 x d)          ``encoder.queries``
``VLV_model.language_proj.{0,2}.*`` (phi)       ``encoder.phi.{0,2}.*``
``VLV_model.model.*`` (Florence-2, remote code) ``encoder.florence.*``, renamed by
                                                ``FLORENCE_RULES`` (native transformers)
``VLV_model.text_encoder[.text_model].*``       ``text_encoder.*`` (``CLIPTextModel``)
==============================================  =========================================

``SKIPPED`` lists what the checkpoint may hold that captioning never uses (a UNet or VAE
left in it, Florence-2's untied frozen ``lm_head`` copy, BART's ``final_logits_bias``,
position-id buffers); each skipped group is reported in one line. Any other key, or any
weight of the native modules that no key fills, fails the import with one error that lists
them by component: nothing is loaded partially (the official loader uses ``strict=False``).

Reading: ``.pt``/``.bin`` files with ``torch.load(weights_only=True, mmap=True)`` (no
unpickling of code), safetensors as they are (a file, or a directory of shards). The
tensors are assigned into modules built on the meta device, so the 4.2B-parameter model
exists once, memory-mapped, until it is saved.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vlv_pipeline.errors import MissingInputError, UserError
from vlv_pipeline.models.weights import tied_names

logger = logging.getLogger(__name__)

# (official key prefix, component here, prefix there): the first match wins
PREFIX_RULES: tuple[tuple[str, str, str], ...] = (
    ("qwen2_model.", "decoder", "llm."),
    ("mlp.layers.", "decoder", "psi."),
    ("VLV_model.query_embed", "encoder", "queries"),
    ("VLV_model.language_proj.", "encoder", "phi."),
    ("VLV_model.model.", "encoder", "florence."),
    ("VLV_model.text_encoder.text_model.", "text_encoder", ""),
    ("VLV_model.text_encoder.", "text_encoder", ""),
)

# Florence-2's remote-code names -> transformers' native Florence2ForConditionalGeneration
# (applied after the prefix above is removed; the first pattern that matches wins)
FLORENCE_RULES: tuple[tuple[str, str], ...] = (
    (r"^vision_tower\.convs\.(\d+)\.proj\.", r"model.vision_tower.convs.\1.conv."),
    (r"^vision_tower\.convs\.(\d+)\.norm\.", r"model.vision_tower.convs.\1.norm."),
    (
        r"^vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.conv([12])\.fn\.dw\.",
        r"model.vision_tower.blocks.\1.\2.\3_block.conv\4.",
    ),
    (
        r"^vision_tower\.blocks\.(\d+)\.(\d+)\.spatial_block\.window_attn\.norm\.",
        r"model.vision_tower.blocks.\1.\2.spatial_block.norm1.",
    ),
    (
        r"^vision_tower\.blocks\.(\d+)\.(\d+)\.channel_block\.channel_attn\.norm\.",
        r"model.vision_tower.blocks.\1.\2.channel_block.norm1.",
    ),
    (
        r"^vision_tower\.blocks\.(\d+)\.(\d+)\.spatial_block\.window_attn\.fn\.(qkv|proj)\.",
        r"model.vision_tower.blocks.\1.\2.spatial_block.window_attn.\3.",
    ),
    (
        r"^vision_tower\.blocks\.(\d+)\.(\d+)\.channel_block\.channel_attn\.fn\.(qkv|proj)\.",
        r"model.vision_tower.blocks.\1.\2.channel_block.channel_attn.\3.",
    ),
    (
        r"^vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.ffn\.norm\.",
        r"model.vision_tower.blocks.\1.\2.\3_block.norm2.",
    ),
    (
        r"^vision_tower\.blocks\.(\d+)\.(\d+)\.(spatial|channel)_block\.ffn\.fn\.net\.(fc[12])\.",
        r"model.vision_tower.blocks.\1.\2.\3_block.ffn.\4.",
    ),
    (r"^image_projection$", "model.multi_modal_projector.image_projection.weight"),
    (r"^image_proj_norm\.", "model.multi_modal_projector.image_proj_norm."),
    (
        r"^image_pos_embed\.(row|column)_embeddings\.",
        r"model.multi_modal_projector.image_position_embed.\1_embeddings.",
    ),
    (
        r"^visual_temporal_embed\.pos_idx_to_embed$",
        "model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed",
    ),
    (r"^language_model\.model\.", "model.language_model."),
)
# a bare (in, out) Parameter used as ``x @ P`` there, a Linear's (out, in) weight here
TRANSPOSED = frozenset({"model.multi_modal_projector.image_projection.weight"})

# groups a checkpoint may hold that captioning never uses: (pattern, what it is)
SKIPPED: tuple[tuple[str, str], ...] = (
    (r"^VLV_model\.(unet|vae)\.", "the stage-1 UNet/VAE"),
    (r"^VLV_model\.model\.language_model\.lm_head\.", "Florence-2's frozen lm_head copy"),
    (r"^VLV_model\.model\.language_model\.final_logits_bias$", "BART's final_logits_bias"),
    (r"position_ids$", "position-id buffers"),
)

COMPONENTS = ("encoder", "text_encoder", "decoder")
DOWNLOAD = (
    "`hf download lambertxiao/Vision-Language-Vision-Captioner-Qwen2.5-3B --local-dir ...`, "
    "then point import_published.checkpoint at the weights file"
)


class PublishedCheckpointError(UserError, ValueError):
    """The checkpoint does not fill this project's modules exactly."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors, memory-mapped: a ``.pt``/``.bin`` (``weights_only``), a
    ``.safetensors`` file, or a directory of safetensors (or ``.pt``) shards."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(
            f"published checkpoint {path} does not exist: download it ({DOWNLOAD})"
        )
    files = (
        [path]
        if path.is_file()
        else sorted(
            p for p in path.iterdir() if p.suffix in {".safetensors", ".pt", ".bin", ".pth"}
        )
    )
    if not files:
        raise MissingInputError(f"{path} holds no .safetensors, .pt or .bin weights")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from vlv_pipeline.models.tensor_files import DamagedWeightsError, load_tensors

            try:
                part = load_tensors(file, what_to_do=f"download it again ({DOWNLOAD})")
            except DamagedWeightsError as error:
                raise PublishedCheckpointError(str(error)) from None
        else:
            try:
                part = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # an unpickling refusal or a damaged file
                raise PublishedCheckpointError(
                    f"{file} is not a plain tensor checkpoint torch.load(weights_only=True) "
                    f"can read ({type(error).__name__}: {error}); nothing else is unpickled"
                ) from error
        state.update(unwrap(part, file))
    return state


def official_crop(image, size: int = 384):
    """A PIL image cropped as the official inference crops it (train/Caption_inference.py:
    torchvision's ``Resize(size)`` then ``CenterCrop(size)`` on the PIL image): the shorter
    side to ``size`` and the longer to ``int(size * long / short)`` with PIL's bilinear
    filter, then the centre ``size`` x ``size``, its offsets rounded with Python's
    ``round``. The caption pipeline crops so for ``caption.model: published``."""
    from PIL import Image

    width, height = image.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def unwrap(state, source: Path | str = "checkpoint") -> dict[str, torch.Tensor]:
    """``{"model_state_dict": {...}}`` -> its dict; a ``module.`` prefix (DDP) removed."""
    if isinstance(state, dict) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PublishedCheckpointError(f"{source} is not a state dict of tensors")
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def florence_key(name: str) -> str | None:
    """The native Florence-2 key of a remote-code key (None: no rule covers it)."""
    for pattern, replacement in FLORENCE_RULES:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name, count=1)
    return None


@dataclass
class Mapped:
    """The checkpoint sorted out: per component, ``{key here: tensor}``; what was skipped
    (``{what: count}``); and keys no rule covers."""

    components: dict[str, dict[str, torch.Tensor]]
    skipped: dict[str, int]
    unknown: list[str]


def map_keys(state: dict[str, torch.Tensor]) -> Mapped:
    components: dict[str, dict[str, torch.Tensor]] = {c: {} for c in COMPONENTS}
    skipped: dict[str, int] = defaultdict(int)
    unknown: list[str] = []
    for name, tensor in state.items():
        what = next((w for p, w in SKIPPED if re.search(p, name)), None)
        if what is not None:
            skipped[what] += 1
            continue
        rule = next((r for r in PREFIX_RULES if name.startswith(r[0])), None)
        if rule is None:
            unknown.append(name)
            continue
        prefix, component, there = rule
        rest = name[len(prefix) :]
        if there == "florence.":
            native = florence_key(rest)
            if native is None:
                unknown.append(name)
                continue
            key = there + native
            if native in TRANSPOSED:
                tensor = tensor.t().contiguous()
        else:
            key = there + rest
        components[component][key] = tensor
    return Mapped(components, dict(skipped), unknown)


def fill(modules: dict[str, nn.Module], mapped: Mapped) -> None:
    """Assign the mapped tensors into ``modules`` (built on the meta device), after checking
    that they fill every weight and nothing else; one error lists every problem."""
    problems = []
    if mapped.unknown:
        problems.append(_listed("keys no rule maps", mapped.unknown))
    for component, module in modules.items():
        expected = set(module.state_dict()) - tied_names(module)
        given = mapped.components[component]
        missing = sorted(expected - set(given))
        extra = sorted(set(given) - set(module.state_dict()))
        if missing:
            problems.append(_listed(f"{component}: weights the checkpoint lacks", missing))
        if extra:
            problems.append(_listed(f"{component}: keys the model does not have", extra))
        shapes = [
            f"{k} {tuple(given[k].shape)} != {tuple(v.shape)}"
            for k, v in module.state_dict().items()
            if k in given and tuple(given[k].shape) != tuple(v.shape)
        ]
        if shapes:
            problems.append(_listed(f"{component}: shapes that differ", shapes))
    if problems:
        raise PublishedCheckpointError(
            "the published checkpoint does not match the captioner it is imported into "
            "(nothing was loaded):\n" + "\n".join(problems)
        )
    for component, module in modules.items():  # assign: the checkpoint's tensors, no copy
        module.load_state_dict(mapped.components[component], strict=False, assign=True)
    for what, count in sorted(mapped.skipped.items()):
        logger.info(
            "import_published: skipped %d tensors of %s (unused by captioning)", count, what
        )


def _listed(title: str, names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit]) + (
        f" ... and {len(names) - limit} more" if len(names) > limit else ""
    )
    return f"- {title} ({len(names)}): {shown}"


def _tie(modules: dict[str, nn.Module]) -> None:
    """Tie the transformers models' word embeddings and output heads, as their configs say."""
    for module in modules.values():
        for part in module.modules():
            if callable(getattr(part, "tie_weights", None)) and hasattr(part, "config"):
                part.tie_weights()


def _config(spec: dict, cls_name: str):
    """A transformers config from ``{"pretrained": dir-or-id, "subfolder": ...}`` (only its
    config.json is read) or ``{"init": {...}}``."""
    import transformers

    if spec.get("init") is not None:
        if cls_name == "AutoConfig":
            init = dict(spec["init"])
            return transformers.AutoConfig.for_model(init.pop("model_type"), **init)
        return getattr(transformers, cls_name)(**spec["init"])
    kwargs = {"subfolder": spec["subfolder"]} if spec.get("subfolder") else {}
    return getattr(transformers, cls_name).from_pretrained(spec["pretrained"], **kwargs)


def _rows(state: dict[str, torch.Tensor], *names: str) -> int:
    for name in names:
        if name in state:
            return int(state[name].shape[0])
    raise PublishedCheckpointError(f"the checkpoint has none of {names}: is it the VLV captioner?")


# Florence-2's position tables, sized by the checkpoint rather than by the config given:
# (key here, config section, config key, rows beyond the size: BART's learned positions
# keep 2 extra rows). Florence-2 copies differ (1024 text positions before Dec. 2024, 4096
# now); the checkpoint says which one the captioner was trained with.
POSITION_TABLES: tuple[tuple[str, str, str, int], ...] = (
    (
        "florence.model.language_model.encoder.embed_positions.weight",
        "text_config",
        "max_position_embeddings",
        2,
    ),
    (
        "florence.model.multi_modal_projector.image_position_embed.row_embeddings.weight",
        "vision_config",
        "max_position_embeddings",
        0,
    ),
    (
        "florence.model.multi_modal_projector.visual_temporal_embed.pos_idx_to_embed",
        "vision_config",
        "max_temporal_embeddings",
        0,
    ),
)


def _size_tables_from(encoder_state: dict[str, torch.Tensor], florence_config: dict) -> None:
    """Set the sizes of Florence-2's position tables in ``florence_config`` to the
    checkpoint's (a table the checkpoint lacks is reported by ``fill``)."""
    for key, section, name, extra in POSITION_TABLES:
        if key not in encoder_state:
            continue
        size = int(encoder_state[key].shape[0]) - extra
        given = florence_config[section].get(name)
        if given != size:
            logger.info(
                "import_published: Florence-2 %s.%s is %d in the checkpoint (%s in the "
                "config given): the checkpoint's is used",
                section,
                name,
                size,
                given,
            )
        florence_config[section][name] = size


def build_captioner(
    state: dict[str, torch.Tensor],
    *,
    florence2: dict,
    text_encoder: dict,
    llm: dict,
    tokenizer,
    prompt_ids: list[int],
    input_size: int | None,
    generation: dict,
    crop_size: int | None = None,
):
    """A ``VLVCaptioner`` holding the published weights: architectures from the component
    configs, sizes (vocabularies, queries, widths) from the checkpoint's own tensors."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, CLIPTextModel

    from vlv_pipeline.models.caption_decoder import CaptionDecoder
    from vlv_pipeline.models.captioner import VLVCaptioner
    from vlv_pipeline.models.vlv_encoder import Florence2VLVEncoder

    mapped = map_keys(state)
    enc, text, dec = (mapped.components[c] for c in COMPONENTS)
    if "queries" not in enc or "phi.2.weight" not in enc or "psi.0.weight" not in dec:
        raise PublishedCheckpointError(
            "the checkpoint lacks VLV_model.query_embed, VLV_model.language_proj or mlp.layers: "
            "is it the published VLV captioner?"
        )
    florence_config = _config(florence2, "Florence2Config").to_dict()
    florence_config["text_config"]["vocab_size"] = _rows(
        enc, "florence.model.language_model.shared.weight"
    )
    _size_tables_from(enc, florence_config)
    clip_config = _config(text_encoder, "CLIPTextConfig")
    clip_config.vocab_size = _rows(text, "embeddings.token_embedding.weight")
    clip_config.max_position_embeddings = _rows(text, "embeddings.position_embedding.weight")
    llm_config = _config(llm, "AutoConfig")
    llm_config.vocab_size = _rows(dec, "llm.model.embed_tokens.weight")
    with init_empty_weights():  # parameters on the meta device, buffers real
        encoder = Florence2VLVEncoder(
            florence_config=florence_config,
            num_queries=int(enc["queries"].shape[1]),
            out_dim=int(enc["phi.2.weight"].shape[0]),
            prompt_ids=tuple(prompt_ids),
            input_size=input_size,
            image_size=crop_size,
        )
        clip = CLIPTextModel(clip_config)
        decoder = CaptionDecoder(
            AutoModelForCausalLM.from_config(llm_config), int(dec["psi.0.weight"].shape[1])
        )
    modules = {"encoder": encoder, "text_encoder": clip, "decoder": decoder}
    _tie(modules)  # built empty, they are not tied yet: tied names are not asked for
    fill(modules, mapped)
    _tie(modules)  # assigning gave each name its own tensor: one again
    captioner = VLVCaptioner(encoder, clip, decoder, tokenizer, **generation)
    from vlv_pipeline.models.provenance import captioner_record

    # the paper's setting, as the import's configs name it (SD 2.1 base's text encoder,
    # Florence-2, the crop side, Qwen2.5): saved with the directory as provenance.json
    captioner.provenance = captioner_record(
        captioner, t2i=text_encoder, resolution=crop_size, llm=llm, model="published_captioner"
    )
    return captioner.eval()

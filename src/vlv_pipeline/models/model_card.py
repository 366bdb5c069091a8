"""Model cards: the README.md with Hugging Face's metadata header that each model directory
a run writes carries (the VLV encoder, the captioner, its "without stage 1" baseline, the
imported published captioner), so a directory is documented wherever it is copied or
published (``publish.py``).

**Written with the model.** The node that makes a model renders its card and hands it over
as the model's ``model_card`` attribute (as it hands over ``provenance``);
``ModelDirectoryDataset.save`` writes it into the directory's temporary copy before the
rename: model and card are saved together (a card that fails to render is logged, and the
model saved without one: ``card_or_none``). What the card records:

- what the model is (the encoder, its queries and width, the T2I model it was distilled
  against, the LLM), and how to load it (``LOAD_SNIPPET`` for a captioner);
- the training parameters (a table of the main ones, then all of them), the time and the
  last loss, the data's size and source;
- intended use and limitations: a shapes-world model (distilled from the shipped teacher)
  knows that world only; any other is as good as its numbers;
- the evaluation: empty at save time (validation runs after the save).

**Filled in by validation.** ``validate_stage1`` and ``validate_stage2`` run right after the
save, in the same pipeline; a small node after each (``card_stage1``, ``card_stage2``) hands
their numbers to ``ModelCardDataset`` (``datasets/model_card.py``), which rewrites the card
of the version the run saved, atomically (``update_evaluation``, in
``models/model_card_evaluation.py``): the text between the
evaluation markers and the header's ``model-index``. ``evaluate``'s tables (FID, Tables 1-3)
do not enter the card: they judge several captioners at once, on settings and evaluation sets
that change between runs of ``evaluate`` (which is rerun, and in conf/paper often runs on
another machine after a model was published), so the card names where they land instead,
and a published copy's card stays what its run wrote.

The parts every card shares (tables, licence, limitations, the Hugging Face header) are
``models/model_card_parts.py``'s.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlv_pipeline.models.model_card_parts import (
    CARD,
    EVALUATE_OUTPUTS,
    PAPER,
    PAPER_CAPTIONER,
    PAPER_LINK,
    card_header,
    component_name,
    evaluation_placeholder,
    hub_ids,
    is_shapes_world,
    licence_terms,
    limitations,
    log_rows,
    markdown_table,
    parameters_block,
    render_card,
    shown,
    source_text,
    training_rows,
)

logger = logging.getLogger(__name__)

# The lines the README and each captioner's model card show, and the test runs. The path is
# the default run's captioner, from the project's root; any captioner directory or Hub repo
# id works in its place.
LOAD_SNIPPET = """\
from PIL import Image
from vlv_pipeline import Captioner
captioner = Captioner.from_pretrained("data/06_models/vlv_captioner")
print(captioner.caption(Image.open("photo.png")))
"""

# -------------------------------------------------------------------------- cards


def card_or_none(make, *args: Any, **kwargs: Any) -> str | None:
    """``make(*args, **kwargs)``, or None with a warning when it fails: a card that cannot be
    rendered must not lose the model a long training made (it is saved without one)."""
    try:
        return make(*args, **kwargs)
    except Exception:  # noqa: BLE001 - any failure: the model matters more than its card
        logger.warning("could not write the model card (%s)", make.__name__, exc_info=True)
        return None


def encoder_card(encoder: Any, params: Any, log: Mapping, data: Mapping, t2i: str) -> str:
    """The stage-1 VLV encoder's card. ``params``: ``Stage1Params``; ``t2i``: the T2I model; ``log``: what
    ``train_stage1`` logs; ``data``: ``{"images": train images, "source": describe()}``."""
    record = getattr(encoder, "provenance", None) or {}
    shapes = is_shapes_world(t2i)
    p = params.model_dump(mode="json")
    florence = (p["encoder"].get("florence2") or {}).get("pretrained")
    components = hub_ids(t2i, florence)
    licence_fields, licence = licence_terms(shapes, components)
    tags = ["vlv", "vision-language-vision", "knowledge-distillation", "caption-embeddings"]
    header = card_header(
        model_name="VLV encoder",
        pipeline_tag="image-feature-extraction",
        tags=tags + (["shapes-world"] if shapes else []),
        base_model=components or None,
        **licence_fields,
    )
    model = markdown_table(
        [
            ("encoder", record.get("encoder", p["encoder"]["backbone"])),
            (
                "caption embeddings",
                f"{record.get('num_queries')} x {record.get('embedding_width')}",
            ),
            ("input side", f"{record.get('resolution')} px"),
            ("frozen T2I model (decoder)", f"`{shown(t2i)}`"),
            ("made by", "`kedro run --pipeline stage1` (stage 1, images only)"),
        ]
    )
    objective = [
        ("timestep sampling", p["timestep_sampling"]),
        ("timestep range", p["timestep_range"]),
        ("noise draws per image", p["noise_draws"]),
        ("anti-collapse weight", p["diversity_weight"]),
    ]
    pending = evaluation_placeholder(
        "validate_stage1",
        "`08_reporting/stage1_metrics.json` (and the grid of reconstructions "
        "`stage1_grid.png`) in the same version as this directory",
    )
    training = markdown_table(training_rows(p["training"]) + objective + log_rows(log))
    body = f"""
# VLV encoder (stage 1)

The image encoder of a Vision-Language-Vision auto-encoder ([{PAPER}]({PAPER_LINK})),
made by vlv-pipeline's stage 1. It maps an image to
{record.get("num_queries")} continuous caption embeddings of width
{record.get("embedding_width")}; they enter the frozen CLIP text encoder of the T2I model as
`inputs_embeds`, and stage 1 trained the encoder so that the frozen UNet, conditioned on
that text encoder's output, denoises the image's latents. The embeddings are an image's
"caption" in the T2I model's own language: stage 2 learns to put it into words.

{model}

## How to load it

```python
from vlv_pipeline.models.vlv_encoder import VLVEncoder
encoder = VLVEncoder.from_pretrained("data/06_models/vlv_encoder/<version>/vlv_encoder")
embeddings = encoder(pixels)  # (B, 3, S, S) in [-1, 1] -> (B, queries, width)
```

`provenance.json` beside the weights records what the encoder was made for; a run with other
settings refuses it by name.

## Training

Trained on **{data.get("images", "?")} images** (the manifest's `train` split) from
{source_text(data.get("source", {}))}.

{training}

{parameters_block("stage1", p)}

## Evaluation

{pending}

## Intended use and limitations

To be the VLV encoder of stage 2 and of `reconstruct` (renders from an image's embeddings).
{limitations(shapes, "encoder")}

## Licence

{licence}
"""
    return render_card(header, body)


def captioner_card(
    captioner: Any,
    params: Any,
    log: Mapping,
    data: Mapping,
    t2i: str,
    model: str = "vlv_captioner",
) -> str:
    """A stage-2 captioner's card (``model``: ``vlv_captioner`` or ``baseline_captioner``).
    ``params``: ``Stage2Params``; ``t2i``: the T2I model; ``data``: ``{"pairs", "source", "validation_images"}``."""
    record = getattr(captioner, "provenance", None) or {}
    shapes = is_shapes_world(t2i)
    p = params.model_dump(mode="json")
    named = component_name(p["llm"])
    llm = f"`{named}`" if named else record.get("llm") or "an LLM built from a config"
    components = hub_ids(t2i, component_name(p["llm"]))
    licence_fields, licence = licence_terms(shapes, components)
    baseline = model == "baseline_captioner"
    title = 'VLV captioner, "without stage 1" baseline' if baseline else "VLV captioner"
    tags = ["vlv", "vision-language-vision", "image-captioning", "knowledge-distillation"]
    header = card_header(
        model_name=title,
        pipeline_tag="image-to-text",
        tags=tags + (["shapes-world"] if shapes else []),
        base_model=components or None,
        **licence_fields,
    )
    trainable = log.get("trainable", p["trainable"])
    what = (
        "the paper's baseline without stage 1: the same LLM and projector trained on the same "
        "pairs from an encoder that had no stage 1 (random, or Florence-2 as pretrained). "
        "Evaluation compares it with the VLV captioner; it is not meant for use"
        if baseline
        else "an image captioner whose encoder learnt from the T2I model alone (stage 1) "
        "and whose LLM learnt to read that encoder's caption embeddings (stage 2)"
    )
    summary = markdown_table(
        [
            ("encoder", f"{record.get('encoder')}, {record.get('num_queries')} queries"),
            ("input side", f"{record.get('resolution')} px"),
            ("frozen text encoder", f"the T2I model's, `{shown(t2i)}`"),
            ("LLM", llm),
            ("trained parts", trainable),
            ("made by", "`kedro run --pipeline stage2`"),
        ]
    )
    generation = p["generation"]
    stage2_rows = [
        ("caption pairs", log.get("pairs", data.get("pairs"))),
        ("longest caption (tokens)", p["max_caption_tokens"]),
        ("LoRA", p["lora"] if "lora" in trainable else None),
        (
            "generation",
            f"{generation['max_new_tokens']} new tokens, {generation['num_beams']} beams",
        ),
    ]
    run_training = (p["baseline"].get("training") if baseline else None) or p["training"]
    rows = training_rows(run_training) + stage2_rows + log_rows(log)
    if log.get("batch_size") not in (None, run_training.get("batch_size")):
        rows.append(("batch size used (all pairs in one batch)", log["batch_size"]))
    metrics_key = "without_stage1" if baseline else "vlv"
    pending = evaluation_placeholder(
        "validate_stage2",
        f"`08_reporting/stage2_metrics.json` (key `{metrics_key}`) in the same version as "
        "this directory",
    )
    encoder_from = (
        "Its encoder had no stage 1; its directory is `baseline_captioner`, loaded as above."
        if baseline
        else "The encoder comes from stage 1 (`vlv_encoder`)."
    )
    use = (
        "A reference point for evaluation only."
        if baseline
        else "Captioning images like those it was trained on."
    )
    pairs = log.get("pairs", data.get("pairs", "?"))
    body = f"""
# {title}

A captioner made by the VLV recipe ([{PAPER}]({PAPER_LINK})) with vlv-pipeline: {what}.
Image -> VLV encoder -> caption embeddings -> the T2I model's frozen CLIP text encoder ->
projector (Linear, GELU, Linear) -> causal LLM -> caption.

{summary}

## How to load it

Without Kedro, from the project's root (`data/06_models/vlv_captioner` is the default run's
folder: its latest version; any captioner directory, such as this one, or a Hub repo id this
folder was published to works in its place):

```python
{LOAD_SNIPPET.strip()}
```

The image is screened, decoded and resized as `kedro run --pipeline caption` does it, so
both give the same caption. `provenance.json` records what the captioner was made for.

## Training

Trained on **{pairs} image-caption pairs**: images from
{source_text(data.get("source", {}))}, captioned by the `synthesize` pipeline's captioner.
{encoder_from}

{markdown_table(rows)}

{parameters_block("stage2", p)}

## Evaluation

{pending}

The paper's measures (FID of re-renders, ratings, VQA: Tables 1-3) come from
`kedro run --pipeline evaluate`, which judges every captioner at once and can be rerun with
other settings; its numbers are not copied here. They land in {EVALUATE_OUTPUTS}.

## Intended use and limitations

{use}
{limitations(shapes, "captioner")}

## Licence

{licence}
"""
    return render_card(header, body)


def published_card(captioner: Any, params: Any) -> str:
    """The imported published captioner's card (``params``: ``ImportParams``)."""
    p = params.model_dump(mode="json")
    names = [component_name(p.get(k)) for k in ("florence2", "text_encoder", "llm", "tokenizer")]
    components = hub_ids(PAPER_CAPTIONER, *names)
    licence_fields, licence = licence_terms(False, components)
    header = card_header(
        model_name="VLV captioner (published, imported)",
        pipeline_tag="image-to-text",
        tags=["vlv", "vision-language-vision", "image-captioning"],
        base_model=[PAPER_CAPTIONER],
        **licence_fields,
    )
    # imported with --env paper (the node's own instructions): conf/paper's data root
    snippet = LOAD_SNIPPET.strip().replace(
        "data/06_models/vlv_captioner", "data/paper/06_models/published_captioner"
    )
    body = f"""
# VLV captioner (published, imported)

The authors' published stage-2 captioner ([{PAPER}]({PAPER_LINK});
[`{PAPER_CAPTIONER}`](https://huggingface.co/{PAPER_CAPTIONER})), converted by
`kedro run --pipeline import_published` from `{shown(p.get("checkpoint"))}` into this project's
captioner directory (safetensors, Florence-2's native keys). Nothing was trained here.

## How to load it

```python
{snippet}
```

`data/paper` is conf/paper's data root (conf/base's is `data`); this folder's own path, or
a Hub repo id it was published to, works in its place. The image gets the official inference's crop ({p.get("crop_size")} px) and the LLM's prefix
in bfloat16, as `kedro run --pipeline caption --params caption.model=published` gives it.

## Evaluation

This project measured nothing at import. `kedro run --env paper --pipeline evaluate` judges
it beside the other captioners (its `published` row); the numbers land in
{EVALUATE_OUTPUTS}. The paper reports the authors' own.

## Intended use and limitations

As the authors describe it (see their model card): detailed captions of natural images.
Generation: {p["generation"]}.

## Licence

{licence}

<details><summary>All of <code>params:import_published</code></summary>

```json
{json.dumps(p, indent=2, default=str)}
```

</details>
"""
    return render_card(header, body)


# ------------------------------------------------------------- reading, updating


def write_card(directory: str | os.PathLike, text: str | None) -> None:
    """``README.md`` in ``directory`` (a save's temporary copy: atomic with it); nothing
    when there is no card."""
    if text:
        Path(directory, CARD).write_text(text, encoding="utf-8")

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
  against, the LLM), and how to load it (``inference.LOAD_SNIPPET`` for a captioner);
- the training parameters (a table of the main ones, then all of them), the time and the
  last loss, the data's size and source;
- intended use and limitations: a shapes-world model (distilled from the shipped teacher)
  knows that world only; any other is as good as its numbers;
- the evaluation: empty at save time (validation runs after the save).

**Filled in by validation.** ``validate_stage1`` and ``validate_stage2`` run right after the
save, in the same pipeline; a small node after each (``card_stage1``, ``card_stage2``) hands
their numbers to ``ModelCardDataset`` (``datasets/model_card.py``), which rewrites the card
of the version the run saved, atomically (``update_evaluation``): the text between the
evaluation markers and the header's ``model-index``. ``evaluate``'s tables (FID, Tables 1-3)
do not enter the card: they judge several captioners at once, on settings and evaluation sets
that change between runs of ``evaluate`` (which is rerun, and in conf/paper often runs on
another machine after a model was published), so the card names where they land instead,
and a published copy's card stays what its run wrote.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlv_pipeline.errors import MissingInputError

logger = logging.getLogger(__name__)

CARD = "README.md"
LIBRARY = "vlv-pipeline"
EVALUATION_START = "<!-- vlv:evaluation -->"
EVALUATION_END = "<!-- /vlv:evaluation -->"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PAPER = "arXiv 2507.07104"
_PAPER_LINK = "https://arxiv.org/abs/2507.07104"
# where evaluate's numbers land (conf/base's catalog; conf/paper's under data/paper)
_EVALUATE_OUTPUTS = (
    "`08_reporting/eval_metrics.json` (captions and reconstructions, every captioner), "
    "`eval_table1.json` (FID of re-renders, Table 1), `eval_table2.json` (ratings, Table 2), "
    "`eval_table3.json` (VQA, Table 3) and `report.html`, each in a version folder under the "
    "environment's data root"
)
PAPER_CAPTIONER = "lambertxiao/Vision-Language-Vision-Captioner-Qwen2.5-3B"


# ------------------------------------------------------------------------- facts


def _hub_ids(*names: Any) -> list[str]:
    """The names that are Hub repo ids (not local paths), in order, once each."""
    found: list[str] = []
    for name in names:
        if isinstance(name, str) and _HUB_ID.match(name) and not Path(name).exists():
            if name not in found:
                found.append(name)
    return found


def _component_name(spec: Any) -> str | None:
    """The name a component spec (``{pretrained: ...}`` or ``{init: ...}``) gives."""
    if isinstance(spec, Mapping):
        if spec.get("pretrained"):
            return str(spec["pretrained"])
        if spec.get("init") is not None:
            return None
    return str(spec) if isinstance(spec, str) else None


def is_shapes_world(t2i: str | None) -> bool:
    """Whether ``t2i`` is the shapes world's shipped teacher (by architecture fingerprint,
    so a copy of it counts; ``models/provenance.py``)."""
    from vlv_pipeline.models.provenance import t2i_fingerprint

    teacher = Path(__file__).resolve().parents[1] / "assets/teacher"
    if not t2i:
        return False
    mine = t2i_fingerprint(t2i)["fingerprint"]
    return mine is not None and mine == t2i_fingerprint(teacher)["fingerprint"]


def describe_source(pixels: Any) -> dict:
    """``{"kind", "path", ...}`` of the image source an ``ImagePixels`` reads ({} if unknown)."""
    source = getattr(getattr(pixels, "reader", None), "source", None)
    describe = getattr(source, "describe", None)
    return dict(describe()) if callable(describe) else {}


def shown(path: Any) -> str:
    """``path`` as the card shows it: relative to the project (the working directory of
    ``kedro run``) when it lies inside it, so a published card names no home folder."""
    text = str(path)
    try:
        return str(Path(text).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return text


def _source_text(source: Mapping) -> str:
    if not source:
        return "an image source the run did not describe"
    extra = ", ".join(
        f"{k} `{shown(v)}`" for k, v in source.items() if k not in ("kind", "path") and v
    )
    text = f"a {source.get('kind', 'image')} source at `{shown(source.get('path', '?'))}`"
    return f"{text} ({extra})" if extra else text


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | {_number(value)} |" for name, value in rows if value is not None]
    return "\n".join(lines)


def _training_rows(training: Mapping) -> list[tuple[str, Any]]:
    batch = training.get("batch_size")
    accumulation = training.get("gradient_accumulation", 1)
    if accumulation and accumulation > 1:
        batch = f"{batch} x {accumulation} accumulation steps"
    return [
        ("steps", training.get("steps")),
        ("batch size (per process)", batch),
        ("learning rate", training.get("learning_rate")),
        ("schedule", f"{training.get('lr_schedule')}, {training.get('warmup_steps', 0)} warm-up"),
        ("optimizer", f"AdamW, betas {tuple(training.get('betas', ()))}"),
        ("weight decay", training.get("weight_decay")),
        ("mixed precision", training.get("mixed_precision")),
        ("EMA decay", training.get("ema_decay")),
        ("seed", training.get("seed")),
    ]


def _log_rows(log: Mapping) -> list[tuple[str, Any]]:
    history = log.get("history") or []
    seconds = log.get("seconds")
    return [
        ("last logged loss", history[-1].get("loss") if history else None),
        ("training time", f"{seconds / 60:.1f} min" if isinstance(seconds, int | float) else None),
        ("trainable parameters", log.get("trainable_parameters")),
    ]


def _parameters_block(name: str, params: Mapping) -> str:
    return (
        f"<details><summary>All of <code>params:{name}</code></summary>\n\n"
        f"```json\n{json.dumps(params, indent=2, default=str)}\n```\n\n</details>"
    )


def _limitations(shapes: bool, what: str) -> str:
    if shapes:
        return (
            f"This {what} belongs to the **shapes world**: it was distilled from the shipped "
            "miniature Stable Diffusion (`src/vlv_pipeline/assets/teacher`), itself trained on "
            "procedurally generated images of coloured shapes on a plain background with exact "
            "captions. It knows that world's shapes, colours, sizes and positions only; a "
            "photograph gets a caption in that vocabulary, not a description. It exists to "
            "check the VLV recipe end to end on a CPU, and is not the paper's model: its "
            "numbers are not comparable with the paper's."
        )
    return (
        f"This {what} was made with the VLV recipe ({_PAPER}) from the models and data "
        "named above. How well it works is what its numbers say: a run smaller than the "
        "paper's (200K stage-1 steps on 40M LAION-aesthetic images, 6M caption pairs) "
        "gives a weaker model than the paper reports. Captions inherit the biases of the "
        "T2I model, the LLM and the images it learnt from; do not use them for decisions "
        "about people."
    )


def _licence(shapes: bool, components: list[str]) -> tuple[dict, str]:
    """The header's licence fields and the card's licence paragraph."""
    if shapes and not components:
        return {"license": "other", "license_name": "vlv-pipeline-shapes-world"}, (
            "Every weight here was trained by this project's pipelines on procedurally "
            "generated images; no third-party weights or data went in. The project declares "
            "no licence of its own: set `license` in the header above before publishing."
        )
    named = ", ".join(f"`{c}`" for c in components) or "the components named above"
    return {"license": "other", "license_name": "inherited-from-components"}, (
        f"This model contains or derives from {named}; their licences apply to it (check each "
        "model's card). Set `license` in the header above to the terms that result before "
        "publishing."
    )


def _header(**fields: Any):
    from huggingface_hub import ModelCardData

    return ModelCardData(library_name=LIBRARY, **{k: v for k, v in fields.items() if v})


def _render(data, body: str) -> str:
    from huggingface_hub import ModelCard

    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"))


def _evaluation_placeholder(runs: str, lands: str) -> str:
    return (
        f"{EVALUATION_START}\n"
        f"Not measured yet: `{runs}` scores this model right after it is saved, and its "
        f"numbers replace this paragraph. They also land in {lands}.\n"
        f"{EVALUATION_END}"
    )


# -------------------------------------------------------------------------- cards


def card_or_none(make, *args: Any, **kwargs: Any) -> str | None:
    """``make(*args, **kwargs)``, or None with a warning when it fails: a card that cannot be
    rendered must not lose the model a long training made (it is saved without one)."""
    try:
        return make(*args, **kwargs)
    except Exception:  # noqa: BLE001 - any failure: the model matters more than its card
        logger.warning("could not write the model card (%s)", make.__name__, exc_info=True)
        return None


def encoder_card(encoder: Any, params: Any, log: Mapping, data: Mapping) -> str:
    """The stage-1 VLV encoder's card. ``params``: ``Stage1Params``; ``log``: what
    ``train_stage1`` logs; ``data``: ``{"images": train images, "source": describe()}``."""
    record = getattr(encoder, "provenance", None) or {}
    shapes = is_shapes_world(params.t2i)
    p = params.model_dump(mode="json")
    florence = (p["encoder"].get("florence2") or {}).get("pretrained")
    components = _hub_ids(params.t2i, florence)
    licence_fields, licence = _licence(shapes, components)
    tags = ["vlv", "vision-language-vision", "knowledge-distillation", "caption-embeddings"]
    header = _header(
        model_name="VLV encoder",
        pipeline_tag="image-feature-extraction",
        tags=tags + (["shapes-world"] if shapes else []),
        base_model=components or None,
        **licence_fields,
    )
    model = _table(
        [
            ("encoder", record.get("encoder", p["encoder"]["backbone"])),
            (
                "caption embeddings",
                f"{record.get('num_queries')} x {record.get('embedding_width')}",
            ),
            ("input side", f"{record.get('resolution')} px"),
            ("frozen T2I model (decoder)", f"`{shown(params.t2i)}`"),
            ("made by", "`kedro run --pipeline stage1` (stage 1, images only)"),
        ]
    )
    objective = [
        ("timestep sampling", p["timestep_sampling"]),
        ("timestep range", p["timestep_range"]),
        ("noise draws per image", p["noise_draws"]),
        ("anti-collapse weight", p["diversity_weight"]),
    ]
    pending = _evaluation_placeholder(
        "validate_stage1",
        "`08_reporting/stage1_metrics.json` (and the grid of reconstructions "
        "`stage1_grid.png`) in the same version as this directory",
    )
    training = _table(_training_rows(p["training"]) + objective + _log_rows(log))
    body = f"""
# VLV encoder (stage 1)

The image encoder of a Vision-Language-Vision auto-encoder ([{_PAPER}]({_PAPER_LINK})),
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
{_source_text(data.get("source", {}))}.

{training}

{_parameters_block("stage1", p)}

## Evaluation

{pending}

## Intended use and limitations

To be the VLV encoder of stage 2 and of `reconstruct` (renders from an image's embeddings).
{_limitations(shapes, "encoder")}

## Licence

{licence}
"""
    return _render(header, body)


def captioner_card(
    captioner: Any, params: Any, log: Mapping, data: Mapping, model: str = "vlv_captioner"
) -> str:
    """A stage-2 captioner's card (``model``: ``vlv_captioner`` or ``baseline_captioner``).
    ``params``: ``Stage2Params``; ``data``: ``{"pairs", "source", "validation_images"}``."""
    from vlv_pipeline.inference import LOAD_SNIPPET

    record = getattr(captioner, "provenance", None) or {}
    shapes = is_shapes_world(params.t2i)
    p = params.model_dump(mode="json")
    named = _component_name(p["llm"])
    llm = f"`{named}`" if named else record.get("llm") or "an LLM built from a config"
    components = _hub_ids(params.t2i, _component_name(p["llm"]))
    licence_fields, licence = _licence(shapes, components)
    baseline = model == "baseline_captioner"
    title = 'VLV captioner, "without stage 1" baseline' if baseline else "VLV captioner"
    tags = ["vlv", "vision-language-vision", "image-captioning", "knowledge-distillation"]
    header = _header(
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
    summary = _table(
        [
            ("encoder", f"{record.get('encoder')}, {record.get('num_queries')} queries"),
            ("input side", f"{record.get('resolution')} px"),
            ("frozen text encoder", f"the T2I model's, `{shown(params.t2i)}`"),
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
    rows = _training_rows(run_training) + stage2_rows + _log_rows(log)
    if log.get("batch_size") not in (None, run_training.get("batch_size")):
        rows.append(("batch size used (all pairs in one batch)", log["batch_size"]))
    metrics_key = "without_stage1" if baseline else "vlv"
    pending = _evaluation_placeholder(
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

A captioner made by the VLV recipe ([{_PAPER}]({_PAPER_LINK})) with vlv-pipeline: {what}.
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
{_source_text(data.get("source", {}))}, captioned by the `synthesize` pipeline's captioner.
{encoder_from}

{_table(rows)}

{_parameters_block("stage2", p)}

## Evaluation

{pending}

The paper's measures (FID of re-renders, ratings, VQA: Tables 1-3) come from
`kedro run --pipeline evaluate`, which judges every captioner at once and can be rerun with
other settings; its numbers are not copied here. They land in {_EVALUATE_OUTPUTS}.

## Intended use and limitations

{use}
{_limitations(shapes, "captioner")}

## Licence

{licence}
"""
    return _render(header, body)


def published_card(captioner: Any, params: Any) -> str:
    """The imported published captioner's card (``params``: ``ImportParams``)."""
    from vlv_pipeline.inference import LOAD_SNIPPET

    p = params.model_dump(mode="json")
    names = [_component_name(p.get(k)) for k in ("florence2", "text_encoder", "llm", "tokenizer")]
    components = _hub_ids(PAPER_CAPTIONER, *names)
    licence_fields, licence = _licence(False, components)
    header = _header(
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

The authors' published stage-2 captioner ([{_PAPER}]({_PAPER_LINK});
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
{_EVALUATE_OUTPUTS}. The paper reports the authors' own.

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
    return _render(header, body)


# ------------------------------------------------------------- reading, updating


def write_card(directory: str | os.PathLike, text: str | None) -> None:
    """``README.md`` in ``directory`` (a save's temporary copy: atomic with it); nothing
    when there is no card."""
    if text:
        Path(directory, CARD).write_text(text, encoding="utf-8")


def evaluation_text(evaluation: Mapping) -> str:
    """The card's evaluation paragraph for ``evaluation`` (``stage1_evaluation``'s or
    ``stage2_evaluation``'s)."""
    lines = [evaluation["summary"], ""]
    metrics = evaluation.get("metrics") or {}
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {_number(value)} |" for name, value in metrics.items()]
        lines.append("")
    samples = evaluation.get("samples") or []
    if samples:
        lines += ["| caption | reference |", "|---|---|"]
        for sample in samples:
            caption = str(sample.get("caption", "")).replace("|", "\\|")
            reference = str(sample.get("reference") or "").replace("|", "\\|")
            lines.append(f"| {caption} | {reference} |")
        lines.append("")
    return "\n".join(lines).strip()


def with_evaluation(card: str, evaluation: Mapping) -> str:
    """``card`` with its evaluation paragraph and the header's ``model-index`` replaced."""
    from huggingface_hub import EvalResult, ModelCard

    parsed = ModelCard(card, ignore_metadata_errors=True)
    dataset = evaluation.get("dataset") or {}
    results = [
        EvalResult(
            task_type=evaluation["task"],
            dataset_type=dataset.get("type", "images"),
            dataset_name=dataset.get("name", "validation images"),
            dataset_split=dataset.get("split"),
            metric_type=name,
            metric_name=name.replace("_", " "),
            metric_value=float(value),
        )
        for name, value in (evaluation.get("metrics") or {}).items()
    ]
    parsed.data.eval_results = results or None
    parsed.data.metrics = list((evaluation.get("metrics") or {}).keys()) or None
    if results and not parsed.data.model_name:
        parsed.data.model_name = "vlv-pipeline model"
    text = parsed.text
    block = f"{EVALUATION_START}\n{evaluation_text(evaluation)}\n{EVALUATION_END}"
    start, end = text.find(EVALUATION_START), text.find(EVALUATION_END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(EVALUATION_END) :]
    else:
        text = f"{text.rstrip()}\n\n## Evaluation\n\n{block}\n"
    return str(ModelCard(f"---\n{parsed.data.to_yaml()}\n---\n{text}"))


def update_evaluation(directory: str | os.PathLike, evaluation: Mapping) -> Path:
    """Rewrite ``directory``'s card with ``evaluation`` (``with_evaluation``), atomically:
    a temporary beside it, flushed, renamed over it (``files.atomic_target``). A directory
    saved before cards gets a card holding the evaluation alone."""
    from vlv_pipeline.files import atomic_target

    directory = Path(directory)
    if not directory.is_dir():
        raise MissingInputError(f"no model directory at {directory} to write the card of")
    card = directory / CARD
    old = card.read_text(encoding="utf-8") if card.is_file() else _bare_card(directory)
    new = with_evaluation(old, evaluation)
    with atomic_target(card) as tmp:
        tmp.write_text(new, encoding="utf-8")
    return card


def _bare_card(directory: Path) -> str:
    header = _header(tags=["vlv", "vision-language-vision"])
    body = (
        f"# {directory.name}\n\nA model directory saved before this project wrote model "
        "cards: only its evaluation is recorded here.\n"
    )
    return _render(header, body)


# ------------------------------------------------------------- validation's numbers


def stage1_evaluation(metrics: Mapping) -> dict:
    """The encoder's card evaluation from ``validate_stage1``'s metrics."""
    sampling = metrics.get("sampling") or {}
    how = (
        f"rendered by the frozen T2I model from their caption embeddings "
        f"({sampling.get('steps')} steps, guidance {sampling.get('guidance')}, "
        f"{sampling.get('scheduler')}, seed {sampling.get('seed')})"
    )
    split = metrics.get("split") or "first non-empty"
    reconstruction = metrics.get("reconstruction") or {}
    if reconstruction:
        summary = (
            f"`validate_stage1`: {metrics.get('images')} images of the `{split}` split "
            f"{how}, judged by the attribute probe against their ground-truth captions "
            "(share of reconstructions whose whole scene, or each attribute, matches)."
        )
    else:
        summary = (
            f"`validate_stage1`: {metrics.get('images')} images of the `{split}` split {how}; "
            "no attribute probe in this environment, so no number: see the grid "
            "`08_reporting/stage1_grid.png` of the same version."
        )
    return {
        "source": "validate_stage1",
        "task": "image-feature-extraction",
        "dataset": {"name": f"{split} images", "type": "images", "split": split},
        "summary": summary,
        "metrics": {k: v for k, v in reconstruction.items() if isinstance(v, int | float)},
    }


def stage2_evaluation(metrics: Mapping, key: str) -> dict | None:
    """A captioner's card evaluation from ``validate_stage2``'s metrics (``key``: ``vlv``
    or ``without_stage1``); None when that captioner was not scored."""
    entry = metrics.get(key)
    if not isinstance(entry, Mapping):
        return None
    generation = metrics.get("generation") or {}
    scored = {
        k: v
        for k, v in entry.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "captions"
    }
    how = (
        f"`validate_stage2`: captions of {metrics.get('images')} evaluation images "
        f"(up to {generation.get('max_new_tokens')} new tokens, num_beams "
        f"{generation.get('num_beams')})"
    )
    if scored:
        summary = (
            f"{how}, parsed and compared with the images' ground-truth scenes (exact scene "
            "match, per-attribute precision and recall). Some captions beside their references:"
        )
    else:
        summary = (
            f"{how}; no attribute probe in this environment, so no scene scores. Some "
            "captions beside their references:"
        )
    return {
        "source": "validate_stage2",
        "task": "image-to-text",
        "dataset": {"name": "evaluation images", "type": "images"},
        "summary": summary,
        "metrics": scored,
        "samples": list(entry.get("samples") or [])[:4],
    }

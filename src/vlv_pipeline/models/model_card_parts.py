"""The parts model cards (``models/model_card.py``) are made of: their constants (the file
name, the evaluation markers, the placeholder licences), the facts a card states (the Hub
ids a model derives from, whether it belongs to the shapes world, its data's source, paths
as the card shows them), the tables and paragraphs every card shares, and the Hugging Face
header and rendering. Nothing here imports torch or a model library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CARD = "README.md"
LIBRARY = "vlv-pipeline"
EVALUATION_START = "<!-- vlv:evaluation -->"
EVALUATION_END = "<!-- /vlv:evaluation -->"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
PAPER = "arXiv 2507.07104"
PAPER_LINK = "https://arxiv.org/abs/2507.07104"
# where evaluate's numbers land (conf/base's catalog; conf/paper's under data/paper)
EVALUATE_OUTPUTS = (
    "`08_reporting/eval_metrics.json` (captions and reconstructions, every captioner), "
    "`eval_table1.json` (FID of re-renders, Table 1), `eval_table2.json` (ratings, Table 2), "
    "`eval_table3.json` (VQA, Table 3) and `report.html`, each in a version folder under the "
    "environment's data root"
)
PAPER_CAPTIONER = "lambertxiao/Vision-Language-Vision-Captioner-Qwen2.5-3B"

# the licence a card's header has until someone sets one (publish.py says it is not set)
SHAPES_LICENCE = "vlv-pipeline-shapes-world"
INHERITED_LICENCE = "inherited-from-components"
PLACEHOLDER_LICENCES = frozenset({SHAPES_LICENCE, INHERITED_LICENCE})


# ------------------------------------------------------------------------- facts


def hub_ids(*names: Any) -> list[str]:
    """The names that are Hub repo ids (not local paths), in order, once each."""
    found: list[str] = []
    for name in names:
        if isinstance(name, str) and _HUB_ID.match(name) and not Path(name).exists():
            if name not in found:
                found.append(name)
    return found


def component_name(spec: Any) -> str | None:
    """The name a component spec (``{pretrained: ...}`` or ``{init: ...}``) gives."""
    if isinstance(spec, Mapping):
        if spec.get("pretrained"):
            return str(spec["pretrained"])
        if spec.get("init") is not None:
            return None
    return str(spec) if isinstance(spec, str) else None


def is_shapes_world(t2i: str | None) -> bool:
    """Whether ``t2i`` is the shapes world's shipped teacher (by architecture fingerprint,
    so a copy of it counts; ``models/provenance_fingerprints.py``)."""
    from vlv_pipeline.models.provenance_fingerprints import t2i_fingerprint

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


def source_text(source: Mapping) -> str:
    if not source:
        return "an image source the run did not describe"
    extra = ", ".join(
        f"{k} `{shown(v)}`" for k, v in source.items() if k not in ("kind", "path") and v
    )
    text = f"a {source.get('kind', 'image')} source at `{shown(source.get('path', '?'))}`"
    return f"{text} ({extra})" if extra else text


def number_text(value: Any) -> str:
    """A table cell's value: a float to four significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: list[tuple[str, Any]]) -> str:
    """A two-column Markdown table of ``(name, value)`` rows, those with a value only."""
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | {number_text(value)} |" for name, value in rows if value is not None]
    return "\n".join(lines)


def training_rows(training: Mapping) -> list[tuple[str, Any]]:
    """The main training parameters (a ``training`` block), as table rows."""
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


def log_rows(log: Mapping) -> list[tuple[str, Any]]:
    """What a training log says (last loss, time, trainable parameters), as table rows."""
    history = log.get("history") or []
    seconds = log.get("seconds")
    return [
        ("last logged loss", history[-1].get("loss") if history else None),
        ("training time", f"{seconds / 60:.1f} min" if isinstance(seconds, int | float) else None),
        ("trainable parameters", log.get("trainable_parameters")),
    ]


def parameters_block(name: str, params: Mapping) -> str:
    """All of ``params:<name>``, as JSON in a folded block."""
    return (
        f"<details><summary>All of <code>params:{name}</code></summary>\n\n"
        f"```json\n{json.dumps(params, indent=2, default=str)}\n```\n\n</details>"
    )


def limitations(shapes: bool, what: str) -> str:
    """The card's limitations paragraph for a ``what`` (shapes-world or not)."""
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
        f"This {what} was made with the VLV recipe ({PAPER}) from the models and data "
        "named above. How well it works is what its numbers say: a run smaller than the "
        "paper's (200K stage-1 steps on 40M LAION-aesthetic images, 6M caption pairs) "
        "gives a weaker model than the paper reports. Captions inherit the biases of the "
        "T2I model, the LLM and the images it learnt from; do not use them for decisions "
        "about people."
    )


def licence_terms(shapes: bool, components: list[str]) -> tuple[dict, str]:
    """The header's licence fields and the card's licence paragraph."""
    if shapes and not components:
        return {"license": "other", "license_name": SHAPES_LICENCE}, (
            "Every weight here was trained by this project's pipelines on procedurally "
            "generated images; no third-party weights or data went in. The project declares "
            "no licence of its own: set `license` in the header above before publishing."
        )
    named = ", ".join(f"`{c}`" for c in components) or "the components named above"
    return {"license": "other", "license_name": INHERITED_LICENCE}, (
        f"This model contains or derives from {named}; their licences apply to it (check each "
        "model's card). Set `license` in the header above to the terms that result before "
        "publishing."
    )


def card_header(**fields: Any):
    """The Hugging Face metadata header (``ModelCardData``) of the fields given a value."""
    from huggingface_hub import ModelCardData

    return ModelCardData(library_name=LIBRARY, **{k: v for k, v in fields.items() if v})


def render_card(data, body: str) -> str:
    """The card's text: the header ``data`` as YAML, then ``body``."""
    from huggingface_hub import ModelCard

    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"))


def evaluation_placeholder(runs: str, lands: str) -> str:
    """The evaluation paragraph at save time, between the markers validation fills in."""
    return (
        f"{EVALUATION_START}\n"
        f"Not measured yet: `{runs}` scores this model right after it is saved, and its "
        f"numbers replace this paragraph. They also land in {lands}.\n"
        f"{EVALUATION_END}"
    )

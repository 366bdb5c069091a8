"""Nodes of the `study` pipeline: each study's rows (``stats``) beside its figure (``plots``),
and study 5's composition renders. The report is ``report``'s node, the preview ``plots``'.
"""

from __future__ import annotations

import logging

import torch

from vlv_pipeline.errors import InputError, ParameterError
from vlv_pipeline.metrics.spatial import composition, disjoint_pairs
from vlv_pipeline.models.device import inference_device
from vlv_pipeline.models.teachers import Condition, Teacher, load_teacher
from vlv_pipeline.params.evaluate import EvaluateParams
from vlv_pipeline.params.study import StudyParams
from vlv_pipeline.params.t2i import T2IParams
from vlv_pipeline.pipelines.study import plots, stats

logger = logging.getLogger(__name__)


def _study(key: str, rows: list[dict], figure) -> tuple[dict, object]:
    """A study's result (its rows and the paper's claim) and its figure of the rows."""
    return {"rows": rows, "paper": stats.PAPER[key]}, figure(rows)


def data_efficiency(params: StudyParams, **inputs) -> tuple[dict, object]:
    """Study 1: exact-scene captions against the number of pairs, VLV against "without
    stage 1" on the same pairs and steps, one line per seed."""
    rows = stats.data_efficiency_rows(stats.split_inputs(inputs), params.confidence)
    return _study("data_efficiency", rows, plots.data_efficiency_figure)


def query_count(params: StudyParams, **inputs) -> tuple[dict, object]:
    """Study 2: reconstructions from the embeddings (exact scenes, attributes) against N."""
    rows = stats.query_count_rows(stats.split_inputs(inputs), params.confidence)
    return _study("queries", rows, plots.query_count_figure)


def what_trains(params: StudyParams, **inputs) -> tuple[dict, object]:
    """Study 3: what trains in stage 2, as a table and a bar chart of exact-scene captions."""
    rows = stats.what_trains_rows(stats.split_inputs(inputs), params.confidence)
    return _study("trainable", rows, plots.what_trains_figure)


def teacher_comparison(params: StudyParams, **inputs) -> tuple[dict, object]:
    """Study 6: the default recipe distilled from each shapes-world teacher: reconstructions
    from the stage-1 embeddings and stage 2's captions (exact scenes), side by side."""
    rows = stats.teacher_rows(stats.split_inputs(inputs), params.confidence)
    return _study("teacher", rows, plots.teacher_figure)


def spatial_fidelity_study(eval_metrics: dict, params: StudyParams) -> tuple[dict, object]:
    """Study 4, from the default run's evaluation: each true object found in its own cell,
    only elsewhere (mean Chebyshev distance) or not at all, per reconstruction."""
    rows = stats.spatial_rows(eval_metrics, params.confidence)
    result = {"rows": rows, "images": eval_metrics["images"], "paper": stats.PAPER["spatial"]}
    return result, plots.spatial_figure(rows)


def padding_embeddings(t2i: Teacher, length: int) -> torch.Tensor:
    """``length`` copies of the teacher's input embedding of its tokenizer's pad token (every
    fed text encoder's, side by side): what the T2I model itself fills a short prompt with
    (study 5's "padded as the model pads")."""
    pad = t2i.tokenizer.pad_token_id
    if pad is None:
        pad = t2i.tokenizer.eos_token_id
    return t2i.token_embeddings[pad].detach().expand(length, -1)


@torch.no_grad()
def composition_study(
    vlv_encoder, eval_data, evaluate: EvaluateParams, t2i: T2IParams, params: StudyParams
) -> tuple[dict, object, object, object]:
    """Study 5: [A's first half ; B's first half] of the caption embeddings, rendered, for
    pairs of test images whose objects occupy different cells; controls: A's first half
    padded as the T2I pads a short prompt, and A's full embeddings."""
    from vlv_pipeline.models.probe import AttributeProbe, caption_targets

    if not evaluate.probe:
        raise ParameterError("study 5 reads renders with the probe: set evaluate.probe")
    probe = AttributeProbe.from_pretrained(evaluate.probe).eval()
    device = inference_device()
    teacher = load_teacher(t2i.model, evaluate.t2i_dtype, device)
    s = evaluate.sampling
    images = eval_data.images()
    scenes = caption_targets(eval_data.references, probe)
    pairs = disjoint_pairs(scenes, params.composition_pairs, params.composition_seed)
    if not pairs:
        raise InputError("no two test images have their objects in different cells")
    encoder = vlv_encoder.eval().to(device)
    step = s.batch_size
    embeddings = torch.cat(
        [encoder(images[i : i + step].to(device)) for i in range(0, len(images), step)]
    )
    a = torch.tensor([i for i, _ in pairs])
    b = torch.tensor([j for _, j in pairs])
    n = embeddings.shape[1]
    half = n // 2
    padding = padding_embeddings(teacher, n - half).to(embeddings.device, embeddings.dtype)
    variants = {
        "a_half_b_half": torch.cat([embeddings[a, :half], embeddings[b, : n - half]], 1),
        "a_half_padded": torch.cat(
            [embeddings[a, :half], padding.unsqueeze(0).expand(len(pairs), -1, -1)], 1
        ),
        "a_full": embeddings[a],
    }
    results, renders = {}, {}
    for name, inputs in variants.items():
        conditions = Condition.cat(
            [teacher.condition(inputs[i : i + step]) for i in range(0, len(inputs), step)]
        )
        renders[name] = teacher.render(conditions, **s.model_dump()).cpu()  # all five sampling keys
        scores = composition(probe.predict(renders[name]), scenes[a], scenes[b])
        results[name] = stats.composition_entry(scores, params.confidence)
        logger.info(
            "study 5 (%s): both %.3f, A's objects %.3f, B's %.3f, neither %.3f",
            name,
            scores["both"],
            scores["from_a"],
            scores["from_b"],
            scores["from_neither"],
        )
    result = {
        "pairs": len(pairs),
        "num_queries": n,
        "half": half,
        "padding": "the text encoder's input embedding of the T2I tokenizer's pad token",
        "variants": results,
        "paper": stats.PAPER["composition"],
    }
    grid = plots.composition_grid(images, a, b, renders)
    return result, plots.composition_figure(results), grid, grid  # saved, and for the preview

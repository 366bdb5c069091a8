"""Caption metrics of the shapes world: parse captions with the world's parser and compare scenes."""

from __future__ import annotations

from vlv_pipeline.world.scene import CaptionParser, Vocabulary

ATTRIBUTES = ("position", "shape", "colour", "size")


def _facts(objects, attribute: str) -> set[tuple]:
    if attribute == "position":
        return {(o.cell,) for o in objects}
    return {(o.cell, getattr(o, attribute)) for o in objects}


def caption_scene_metrics(
    predicted: list[str], references: list[str], vocab: Vocabulary
) -> dict[str, float]:
    """Exact-scene match and per-attribute precision/recall of captions against references.

    ``exact_scene``: the caption parses completely (no junk) into exactly the reference's
    objects (cell, size, colour, shape). Per attribute, the facts are (cell, value) pairs
    (``position``: the occupied cells); precision and recall are micro-averaged over all
    captions. ``parsed`` is the share of captions with no unparsed text.
    """
    if len(predicted) != len(references):
        raise ValueError(f"{len(predicted)} captions for {len(references)} references")
    if not predicted:
        raise ValueError("no captions to score")
    parser = CaptionParser(vocab)
    exact = parsed = 0
    hits = {a: 0 for a in ATTRIBUTES}
    n_pred = {a: 0 for a in ATTRIBUTES}
    n_ref = {a: 0 for a in ATTRIBUTES}
    for text, reference in zip(predicted, references, strict=True):
        got, want = parser.parse(text), parser.parse(reference)
        parsed += got.complete
        exact += got.complete and got.keys() == want.keys()
        for a in ATTRIBUTES:
            p, r = _facts(got.objects, a), _facts(want.objects, a)
            hits[a] += len(p & r)
            n_pred[a] += len(p)
            n_ref[a] += len(r)
    result = {"captions": len(predicted), "exact_scene": exact / len(predicted)}
    result["parsed"] = parsed / len(predicted)
    for a in ATTRIBUTES:
        result[f"{a}_precision"] = hits[a] / max(1, n_pred[a])
        result[f"{a}_recall"] = hits[a] / max(1, n_ref[a])
    return result

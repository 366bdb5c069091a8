"""Caption text metrics: BLEU-4, ROUGE-L and CIDEr from pycocoevalcap (the COCO caption code).

pycocoevalcap's PTB tokenizer, METEOR and SPICE need Java, so they are not used: captions
are tokenised here (lower case, punctuation dropped, split on spaces), and METEOR/SPICE are
left out rather than approximated.
"""

from __future__ import annotations

import re

_PUNCT = re.compile(r"[^\w\s]")


def tokenize(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", (text or "").lower()).split())


def caption_text_metrics(
    predicted: list[str], references: list[str | list[str]]
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Corpus BLEU-4, ROUGE-L and CIDEr, and the per-caption scores.

    ``references`` holds one reference per caption, or a list of references per caption.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if len(predicted) != len(references) or not predicted:
        raise ValueError(f"{len(predicted)} captions for {len(references)} references")
    refs = {
        i: [tokenize(r) for r in (ref if isinstance(ref, list) else [ref])]
        for i, ref in enumerate(references)
    }
    hyps = {i: [tokenize(p) or "<empty>"] for i, p in enumerate(predicted)}
    bleu, bleu_each = Bleu(4).compute_score(refs, hyps, verbose=0)
    rouge, rouge_each = Rouge().compute_score(refs, hyps)
    cider, cider_each = Cider().compute_score(refs, hyps)
    corpus = {"bleu4": float(bleu[3]), "rouge_l": float(rouge), "cider": float(cider)}
    each = {
        "bleu4": [float(x) for x in bleu_each[3]],
        "rouge_l": [float(x) for x in rouge_each],
        "cider": [float(x) for x in cider_each],
    }
    return corpus, each

"""`caption.postprocess`: the official inference's clean-up of a caption (issue 26, item 15
follow-up).

The official caption inference (Tiezheng11/Vision-Language-Vision, train/Caption_inference.py,
``process_caption``) does, in order:

1. when the caption does not end with a full stop, cut it just after its last full stop (only
   "." counts here, not "!" or "?"); a caption without any full stop is left as it is;
2. split it into sentences at each run of whitespace that follows ".", "!" or "?" (the mark
   stays with its sentence; a "." inside a word or number, as in "3.5", splits nothing);
3. keep each sentence the first time it appears (exact text, mark included), in order;
4. join the kept sentences with one space.

The cases below are made by hand from that definition.
"""

import pytest

from vlv_pipeline.models.captioning import official_postprocess


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        # repeats end at "!" and "?" too
        ("A cat! A cat! A dog.", "A cat! A dog."),
        ("Is it red? Is it red? It is.", "Is it red? It is."),
        # a decimal is not a sentence end
        ("The bar is 3.5 m tall. The bar is 3.5 m tall.", "The bar is 3.5 m tall."),
        ("It costs 2.50 dollars", "It costs 2."),  # step 1 still cuts after the last "."
        # the cut looks for "." only: a last sentence ending in "!" goes with the unfinished
        ("A cat. A dog! And a bird", "A cat."),
        ("Wow! A dog", "Wow! A dog"),  # no full stop at all: unchanged
        # a sentence is its exact text, mark included
        ("A cat. A cat! A cat.", "A cat. A cat!"),
        # whitespace of any kind and length after a mark separates; none does not
        ("One.  Two.\nOne.", "One. Two."),
        ("A cat.A cat. A dog.", "A cat.A cat. A dog."),
        ("A cat.. A dog. A cat..", "A cat.. A dog."),
        # abbreviations followed by a space are sentence ends, as in the official code
        ("e.g. a cat. e.g. a cat.", "e.g. a cat."),
        # unchanged cases
        ("A red circle.", "A red circle."),
        ("", ""),
        # the cases the pipeline's tests already held
        ("A cat. A cat. A dog on a mat. A cat", "A cat. A dog on a mat."),
        ("One. Two. One. Two. Thr", "One. Two."),
    ],
)
def test_the_official_clean_up(raw, clean):
    assert official_postprocess(raw) == clean

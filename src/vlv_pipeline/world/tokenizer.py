"""A word-level tokenizer for the world's vocabulary, saved as a transformers tokenizer.

Built with the ``tokenizers`` library and wrapped in ``PreTrainedTokenizerFast`` so later
stages load it with ``AutoTokenizer.from_pretrained(dir)`` like any hub tokenizer.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from vlv_pipeline.world.scene import Vocabulary

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)  # ids 0, 1, 2, 3


def build_world_tokenizer(vocab: Vocabulary, model_max_length: int = 77) -> PreTrainedTokenizerFast:
    """A tokenizer whose vocabulary is the special tokens plus every caption word.

    Encoding adds ``<bos>`` and ``<eos>`` (as CLIP's tokenizer does); anything outside the
    vocabulary becomes ``<unk>``. ``model_max_length`` matches CLIP's 77 positions so the
    same text encoder accepts N = 77 caption embeddings.
    """
    table = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *vocab.words()))}
    core = Tokenizer(models.WordLevel(vocab=table, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, table[BOS]), (EOS, table[EOS])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
        padding_side="right",
    )

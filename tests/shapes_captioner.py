"""A shapes-world captioner in seconds: the shipped teacher's text encoder and tokenizer, a
small VLV encoder made as conf/base's stage 1 makes it (32 px, 16 queries, the teacher's
64-wide embeddings) and a tiny Qwen2, untrained. What `make run` leaves in
``06_models/vlv_captioner``, at a fraction of the size and none of the training."""

from __future__ import annotations

from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
TEACHER = ROOT / "src/vlv_pipeline/assets/teacher"
# conf/base/globals.yml names the teacher by this path (relative to the project)
TEACHER_REF = "src/vlv_pipeline/assets/teacher"
TINY_QWEN2 = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 128,
    "tie_word_embeddings": True,
}


def shapes_captioner(num_queries: int = 16, image_size: int = 32):
    from transformers import AutoTokenizer, CLIPTextModel, Qwen2Config, Qwen2ForCausalLM

    from vlv_pipeline.models.caption_decoder import CaptionDecoder
    from vlv_pipeline.models.captioner import VLVCaptioner
    from vlv_pipeline.models.vlv_encoder import SmallVLVEncoder

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(TEACHER / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(TEACHER / "text_encoder")
    width = text_encoder.config.hidden_size
    encoder = SmallVLVEncoder(
        num_queries=num_queries,
        out_dim=width,
        image_size=image_size,
        width=16,
        stem_channels=(8, 8, 16),
        encoder_layers=1,
        decoder_layers=1,
        heads=2,
    )
    llm = Qwen2ForCausalLM(
        Qwen2Config(**TINY_QWEN2, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
    )
    decoder = CaptionDecoder(llm, width)
    return VLVCaptioner(encoder, text_encoder, decoder, tokenizer, max_new_tokens=4).eval()


def save_captioner(captioner, folder: Path) -> Path:
    """Saved as the catalog saves ``vlv_captioner`` (versioned) under ``folder``; the
    version's directory."""
    from kedro.io import Version

    from vlv_pipeline.datasets.model_directory import ModelDirectoryDataset

    dataset = ModelDirectoryDataset(
        filepath=str(folder),
        load_class="vlv_pipeline.models.captioner.VLVCaptioner",
        version=Version(None, None),
    )
    dataset.save(captioner)
    return Path(dataset._get_load_path())

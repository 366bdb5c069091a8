"""A fresh VLV encoder from its parameters: what stage 1 trains and the baseline starts from."""

from __future__ import annotations

from vlv_pipeline.models.registry import load_component
from vlv_pipeline.models.vlv_encoder import Florence2VLVEncoder, SmallVLVEncoder, vae_config_of
from vlv_pipeline.params.stage1 import EncoderParams


def build_encoder(spec: EncoderParams, out_dim: int, t2i_vae=None, token_embeddings=None):
    """A fresh VLV encoder for caption embeddings of width ``out_dim``.

    ``t2i_vae`` (the frozen decoder's VAE) seeds the small encoder's vision tower when
    ``small.vision_tower`` is ``t2i_vae``; ``token_embeddings`` (the frozen text encoder's
    word-embedding table) is its output vocabulary when ``small.output`` is ``vocabulary``.
    """
    if spec.backbone == "small":
        kwargs = spec.small.model_dump()
        tower, output = kwargs.pop("vision_tower"), kwargs.pop("output")
        if tower == "t2i_vae":
            kwargs["vae_config"] = vae_config_of(t2i_vae)
        if output == "vocabulary":
            if token_embeddings is None:
                raise ValueError("small.output: vocabulary needs the T2I text encoder's embeddings")
            kwargs["vocab_size"] = token_embeddings.shape[0]
        encoder = SmallVLVEncoder(num_queries=spec.num_queries, out_dim=out_dim, **kwargs)
        if tower == "t2i_vae":
            encoder.load_vae_tower(t2i_vae)
        if output == "vocabulary":
            encoder.load_vocabulary(token_embeddings)
        return encoder
    cfg = spec.florence2
    source = {"pretrained": cfg.pretrained} if cfg.pretrained else {"init": cfg.init}
    florence = load_component("florence2", source)
    tokenizer = load_component("tokenizer", {"pretrained": cfg.tokenizer or cfg.pretrained})
    prompt_ids = tokenizer(cfg.prompt).input_ids
    return Florence2VLVEncoder.from_florence(florence, spec.num_queries, out_dim, prompt_ids)

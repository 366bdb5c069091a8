"""Benchmark: stage 2's training step and caption generation, against their references.

    python bench/bench_stage2.py [--steps 20] [--batch 64] [--images 64]

1. A stage-2 training step (psi + the shapes world's default Qwen2, projector+llm) fed the
   embedding cache's text-encoder outputs, vs the same step recomputing the frozen VLV
   encoder (VAE tower, transformer, queries) and the frozen text encoder every step.
2. Caption generation: batched with the KV cache (``VLVCaptioner.caption_conditions``) vs one
   image at a time (also with the KV cache), and batched without the KV cache, for scale.
   Every caption is forced to the same length (min_new_tokens), so random weights do not
   make one side stop early.

Models are built from conf/base's stage-1 and stage-2 parameters with random weights (speed
does not depend on the weights), the frozen parts from the shipped teacher.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from steps import time_steps  # noqa: E402

from vlv_pipeline.models.caption_decoder import CaptionDecoder, tokenize_captions  # noqa: E402
from vlv_pipeline.models.stage2 import Stage2Objective, set_trainable  # noqa: E402
from vlv_pipeline.models.teachers import load_teacher  # noqa: E402
from vlv_pipeline.models.text_encoder import encode_embeddings  # noqa: E402
from vlv_pipeline.params.stage1 import Stage1Params  # noqa: E402
from vlv_pipeline.params.stage2 import Stage2Params  # noqa: E402
from vlv_pipeline.pipelines.stage1.nodes import build_encoder  # noqa: E402
from vlv_pipeline.pipelines.stage2.nodes import build_llm  # noqa: E402


def _params():
    def load(name):
        return yaml.safe_load((ROOT / f"conf/base/parameters_{name}.yml").read_text())[name]

    stage1, stage2 = load("stage1"), load("stage2")
    # the T2I model (params:t2i.model): conf/base's globals name it
    t2i = str(ROOT / yaml.safe_load((ROOT / "conf/base/globals.yml").read_text())["t2i"])
    stage2["tokenizer"]["pretrained"] = str(ROOT / stage2["tokenizer"]["pretrained"])
    return Stage1Params(**stage1), Stage2Params(**stage2), t2i


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=64, help="captions generated per method")
    parser.add_argument("--tokens", type=int, default=24, help="tokens per caption")
    args = parser.parse_args()
    stage1, stage2, t2i_model = _params()
    torch.manual_seed(0)
    t2i = load_teacher(t2i_model)
    token_embeddings = t2i.text_encoder.get_input_embeddings().weight
    encoder = build_encoder(stage1.encoder, t2i.width, t2i.vae, token_embeddings).eval()
    from vlv_pipeline.models.registry import load_component

    tokenizer = load_component("tokenizer", stage2.tokenizer)
    decoder = CaptionDecoder(build_llm(stage2, tokenizer), t2i.width)
    set_trainable(decoder, encoder, frozenset({"projector", "llm"}))
    size = t2i.vae.config.sample_size
    captions = [
        "a small red circle at the top left and a large blue square in the centre"
    ] * args.batch
    tokens = tokenize_captions(tokenizer, captions, stage2.max_caption_tokens)
    pixels = [torch.rand(args.batch, 3, size, size) * 2 - 1 for _ in range(4)]
    with torch.no_grad():
        conditions = [encode_embeddings(t2i.text_encoder, encoder(p)) for p in pixels]
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    cached = time_steps(Stage2Objective(decoder), [(c, ids, mask) for c in conditions], args.steps)
    recompute = time_steps(
        Stage2Objective(decoder, encoder, t2i.text_encoder),
        [(p, ids, mask) for p in pixels],
        args.steps,
    )
    print(f"stage-2 step, batch {args.batch}, {size} px, {torch.get_num_threads()} threads")
    print(f"  cached embeddings (ours):      {cached:.4f} s/step")
    print(f"  recompute frozen encoder (ref): {recompute:.4f} s/step")
    print(f"  speed-up: {recompute / cached:.2f}x")

    decoder.eval()
    settings = dict(
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    prefix = torch.cat(conditions)[: args.images]

    def timed(fn) -> float:
        fn(prefix[:2])  # warm-up
        start = time.perf_counter()
        fn(prefix)
        return args.images / (time.perf_counter() - start)

    batched = timed(lambda c: decoder.generate(c, **settings))
    one_by_one = timed(
        lambda c: [decoder.generate(c[i : i + 1], **settings) for i in range(len(c))]
    )
    no_cache = timed(lambda c: decoder.generate(c, use_cache=False, **settings))
    print(f"caption generation, {args.images} images x {args.tokens} tokens, greedy")
    print(f"  batched, KV cache (ours):      {batched:8.1f} captions/s")
    print(f"  one image at a time (ref):     {one_by_one:8.1f} captions/s")
    print(f"  batched, no KV cache:          {no_cache:8.1f} captions/s")
    print(f"  speed-up over one at a time: {batched / one_by_one:.2f}x")


if __name__ == "__main__":
    main()

"""Quality of the teacher against training time, from its saved checkpoints.

    python scripts/teacher_quality_curve.py CHECKPOINT_RUN_DIR TEACHER_DIR PROBE_DIR OUT_PREFIX

CHECKPOINT_RUN_DIR holds the text-to-image run's checkpoint-N folders (the teacher pipeline
keeps the last `keep_checkpoints`; raise it, or copy them aside while training, to keep
them all). TEACHER_DIR is a finished teacher (its VAE, tokenizer and configs are reused),
PROBE_DIR the attribute probe. Each checkpoint's EMA weights render the first 256 test
captions of the default world (the teacher pipeline's evaluation settings) and the probe
judges them. Writes OUT_PREFIX.json and OUT_PREFIX.png.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from vlv_pipeline.metrics.plots import plt
from vlv_pipeline.metrics.scenes import scene_agreement
from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.models.teacher import render_captions
from vlv_pipeline.params.teacher import TeacherParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.pipelines.world.nodes import generate_labels
from vlv_pipeline.training.loop import list_checkpoints
from vlv_pipeline.world.data import scene_targets

ROOT = Path(__file__).resolve().parents[1]


def main(run_dir: str, teacher_dir: str, probe_dir: str, out_prefix: str) -> None:
    params = TeacherParams(
        **yaml.safe_load((ROOT / "conf/base/parameters_teacher.yml").read_text())["teacher"]
    )
    world = WorldParams(
        **yaml.safe_load((ROOT / "conf/base/parameters_world.yml").read_text())["world"]
    )
    labels = generate_labels(world)
    test = labels[labels["split"] == "test"].sort_values("file").head(params.eval_images)
    targets = torch.stack(
        [
            scene_targets(o, world.shapes, list(world.colours), list(world.sizes))
            for o in test["objects"]
        ]
    )
    probe = AttributeProbe.from_pretrained(probe_dir).eval()
    pipe = StableDiffusionPipeline.from_pretrained(teacher_dir)
    trainable = [p for m in (pipe.unet, pipe.text_encoder) for p in m.parameters()]
    rows = []
    for step, path in list_checkpoints(Path(run_dir)):
        state = load_file(str(path / "model.safetensors"))
        pipe.unet.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("unet.")})
        pipe.text_encoder.load_state_dict(
            {k[13:]: v for k, v in state.items() if k.startswith("text_encoder.")}, strict=False
        )
        ema = torch.load(path / "custom_checkpoint_0.pkl", weights_only=False)
        # the objective's trainable order: unet, then text encoder (as registered in it)
        for param, shadow in zip(trainable, ema["shadow_params"], strict=True):
            param.data.copy_(shadow)
        s = params.evaluation
        images = render_captions(
            pipe,
            test["caption"].tolist(),
            steps=s.steps,
            guidance=s.guidance,
            seed=s.seed,
            batch_size=s.batch_size,
            scheduler=s.scheduler,
        )
        scores = scene_agreement(probe.predict(images), targets)
        rows.append({"step": step, **scores})
        print(
            f"step {step}: exact {scores['exact_scene']:.4f} attributes {scores['attributes']:.4f}",
            flush=True,
        )
    Path(f"{out_prefix}.json").write_text(json.dumps(rows, indent=2))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in rows], [r["exact_scene"] for r in rows], "o-", label="exact scene")
    ax.plot([r["step"] for r in rows], [r["attributes"] for r in rows], "s--", label="attributes")
    ax.set_xlabel("training step (batch 64)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("teacher quality vs training (EMA weights, probe-judged)")
    fig.tight_layout()
    fig.savefig(f"{out_prefix}.png", dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:5])

"""Quality of a shapes-world teacher against training time, from its saved checkpoints.

    python scripts/teacher_quality_curve.py CHECKPOINT_RUN_DIR TEACHER_DIR PROBE_DIR OUT_PREFIX [--flow]

CHECKPOINT_RUN_DIR holds the text-to-image run's checkpoint-N folders (the teacher pipeline
keeps the last `keep_checkpoints`; raise it, or copy them aside while training, to keep
them all). TEACHER_DIR is a finished teacher of the same architecture (its VAE, tokenizer and
configs are reused), PROBE_DIR the attribute probe. Each checkpoint's EMA weights
(`ema.safetensors`, keyed by the objective's part names: `unet.`, `transformer.`,
`text_encoder.`, ...) render the first test captions of the default world with the teacher
pipeline's evaluation settings (`teacher.evaluation`, or `teacher_flow.evaluation` with
`--flow`), and the probe judges them. Writes OUT_PREFIX.json and OUT_PREFIX.png.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from vlv_pipeline.metrics.plots import plt
from vlv_pipeline.metrics.scenes import scene_agreement
from vlv_pipeline.models.probe import AttributeProbe
from vlv_pipeline.models.teachers import load_teacher
from vlv_pipeline.params.teacher import FlowTeacherParams, TeacherParams
from vlv_pipeline.params.world import WorldParams
from vlv_pipeline.training.checkpoint import EMA_FILE
from vlv_pipeline.training.run_folders import list_checkpoints
from vlv_pipeline.world.data import scene_targets
from vlv_pipeline.world.generate import generate_labels

ROOT = Path(__file__).resolve().parents[1]


def load_ema(teacher, checkpoint: Path) -> None:
    """The checkpoint's EMA weights into the teacher's parts, by the objective's part names."""
    state = load_file(str(checkpoint / EMA_FILE))
    parts: dict[str, dict] = {}
    for key, value in state.items():
        part, _, name = key.partition(".")
        parts.setdefault(part, {})[name] = value
    for part, weights in parts.items():
        module = getattr(teacher, part, None)
        if module is None:
            raise SystemExit(
                f"{checkpoint}: EMA weights for {part!r}, which {teacher.pretrained} lacks"
            )
        _, unexpected = module.load_state_dict(weights, strict=False)
        if unexpected:
            raise SystemExit(f"{checkpoint}: {part} does not have {unexpected[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("run_dir", "teacher_dir", "probe_dir", "out_prefix"):
        parser.add_argument(name)
    parser.add_argument("--flow", action="store_true", help="the flow-matching teacher")
    args = parser.parse_args()
    conf = yaml.safe_load((ROOT / "conf/base/parameters_teacher.yml").read_text())
    params = (
        FlowTeacherParams(**conf["teacher_flow"]) if args.flow else TeacherParams(**conf["teacher"])
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
    probe = AttributeProbe.from_pretrained(args.probe_dir).eval()
    teacher = load_teacher(args.teacher_dir)
    rows = []
    for step, path in list_checkpoints(Path(args.run_dir)):
        load_ema(teacher, path)
        s = params.evaluation
        images = teacher.render_captions(
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
    Path(f"{args.out_prefix}.json").write_text(json.dumps(rows, indent=2))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["step"] for r in rows], [r["exact_scene"] for r in rows], "o-", label="exact scene")
    ax.plot([r["step"] for r in rows], [r["attributes"] for r in rows], "s--", label="attributes")
    ax.set_xlabel("training step (batch 64)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("teacher quality vs training (EMA weights, probe-judged)")
    fig.tight_layout()
    fig.savefig(f"{args.out_prefix}.png", dpi=110)


if __name__ == "__main__":
    main()

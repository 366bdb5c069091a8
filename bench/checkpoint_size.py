"""Checkpoint size at paper scale: whole objective (before) vs trained models only (after).

    python bench/checkpoint_size.py            # about 15 s on 2 CPU cores, no download

A ``checkpoint-N`` folder used to hold the WHOLE objective (``accelerator.save_state``:
the trainable model and every frozen part: SD 2.1's UNet and text encoder in stage 1, the
text encoder in stage 2) plus AdamW's state; it now holds only the models the objective
names in ``trained_models()`` (``training/checkpoint.py``) plus AdamW's state. AdamW keeps
two tensors per TRAINABLE parameter (exp_avg, exp_avg_sq) at the parameter's dtype.

The paper-size numbers are COMPUTED FROM PARAMETER COUNTS (bytes = elements x element
size: 4 bytes per fp32 parameter), not measured on disk: the paper-size objectives
(``gpu_smoke.PAPER``: SD 2.1 base's UNet and OpenCLIP-H text encoder, Florence-2-large with
77 queries, Qwen2.5-3B) are built on the meta device, so nothing is allocated, and the
project's own freezing code runs on them (``Stage1Objective``, ``Florence2VLVEncoder``'s
``freeze_unused``, stage 2's ``set_trainable``); what a checkpoint stores is read from
the objective's real ``trained_models()``. Weights are fp32 as built: stage 1 runs in fp32,
and stage 2's bf16 is Accelerate mixed precision, which keeps fp32 weights. Shared (tied)
tensors count once, as safetensors and ``save_pretrained`` write them once; scheduler and
RNG state (a few KB) are left out of the formula.

To anchor the formula, it also trains two small stage-1 objectives for one step through the
real ``train()`` with ``checkpoint_every: 1``: the default world's (the shipped teacher,
conf/base's encoder) and the paper's classes built small (Florence-2 with tied token
embeddings, a CLIP text encoder, a UNet). Each runs twice: as the loop saves now, and with
the save hook taken out (the old layout: Accelerate's ``model.safetensors`` of the whole
objective); each ``checkpoint-1`` folder's size on disk is compared with what the same
formula predicts. What remains is per-tensor headers (safetensors JSON, the zip records of
``optimizer.bin``): a few percent for these small tensors, nothing at paper size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_smoke import PAPER  # noqa: E402

from vlv_pipeline.models.caption_decoder import CaptionDecoder  # noqa: E402
from vlv_pipeline.models.stage1 import Stage1Objective  # noqa: E402
from vlv_pipeline.models.stage2 import Stage2Objective, set_trainable  # noqa: E402
from vlv_pipeline.models.teachers.families import StableDiffusionTeacher  # noqa: E402
from vlv_pipeline.models.vlv_encoder import Florence2VLVEncoder  # noqa: E402
from vlv_pipeline.training import checkpoint  # noqa: E402

GB = 1e9
STAGE2_SETTINGS = ("projector", "projector+lora", "projector+llm", "projector+llm+encoder")

# parameter-name prefixes -> component labels (first match wins)
PARTS = (
    ("encoder.florence.model.vision_tower.", "Florence-2 DaViT vision tower"),
    ("encoder.florence.model.multi_modal_projector.", "Florence-2 image projector"),
    ("encoder.florence.", "Florence-2 BART enc-dec (+ tied lm_head)"),
    ("encoder.", "VLV queries + phi"),
    ("text_encoder.", "OpenCLIP-H text encoder"),
    ("unet.", "SD 2.1 base UNet"),
    ("decoder.psi.", "psi"),
    ("decoder.llm.", "Qwen2.5-3B"),
)


def unique_tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """What ``state_dict`` holds (parameters and persistent buffers), tied tensors once."""
    seen, out = set(), []
    for tensor in module.state_dict(keep_vars=True).values():
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out.append(tensor)
    return out


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def trainable_params(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def adam_bytes(module: torch.nn.Module) -> int:
    """AdamW's exp_avg and exp_avg_sq: two tensors like each trainable parameter."""
    return 2 * nbytes(trainable_params(module))


def saved_tensors(objective: torch.nn.Module) -> tuple[list[torch.Tensor], list[str]]:
    """The tensors ``checkpoint.save_trained`` writes, and the names it writes them under."""
    parts = checkpoint.trained_models(objective)  # the real choice, checked for coverage
    if not parts:
        return list(checkpoint._loose_tensors(objective).values()), [checkpoint.TRAINABLE_FILE]
    tensors, names = [], []
    for name, module in parts.items():
        if checkpoint._is_lora(module):  # peft's save_pretrained writes the adapter only
            from peft import get_peft_model_state_dict

            tensors += list(get_peft_model_state_dict(module).values())
            names.append(f"{name}/ (adapter)")
        else:
            tensors += unique_tensors(module)
            names.append(
                f"{name}/" if hasattr(module, "save_pretrained") else f"{name}.safetensors"
            )
    return tensors, names


def sizes(objective: torch.nn.Module) -> dict:
    params = list(objective.parameters())  # tied parameters once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    adam = adam_bytes(objective)
    kept, names = saved_tensors(objective)
    return {
        "trainable": trainable,
        "frozen": frozen,
        "before_weights": nbytes(unique_tensors(objective)),
        "after_weights": nbytes(kept),
        "adam": adam,
        "holds": " + ".join(names),
    }


def components(objective: torch.nn.Module) -> list[tuple[str, int, int, str]]:
    """(label, trainable, frozen, dtype) per component of the objective."""
    rows: dict[str, list] = {}
    for name, p in objective.named_parameters():
        label = next((lab for pre, lab in PARTS if name.startswith(pre)), name.split(".")[0])
        if label == "Qwen2.5-3B" and "lora_" in name:
            label = "LoRA adapter"
        row = rows.setdefault(label, [0, 0, set()])
        row[0 if p.requires_grad else 1] += p.numel()
        row[2].add(str(p.dtype).replace("torch.", ""))
    return [(k, t, f, "/".join(sorted(d))) for k, (t, f, d) in rows.items()]


def paper_parts():
    """SD 2.1 base's text encoder and UNet, Florence-2-large as the VLV encoder, Qwen2.5-3B."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, Qwen2Config, Qwen2ForCausalLM

    with torch.device("meta"):
        text = CLIPTextModel(CLIPTextConfig(**PAPER["text"]))
        encoder = Florence2VLVEncoder(  # freeze_unused() runs in __init__, as in from_florence
            florence_config=PAPER["florence"],
            num_queries=PAPER["queries"],
            out_dim=PAPER["text"]["hidden_size"],
            prompt_ids=tuple(range(4, 4 + PAPER["prompt_tokens"])),
        )
        unet = lambda: UNet2DConditionModel(**PAPER["unet"])  # noqa: E731
        llm = lambda: Qwen2ForCausalLM(Qwen2Config(**PAPER["llm"]))  # noqa: E731
        return text, encoder, unet, llm, DDPMScheduler(num_train_timesteps=1000)


def stage1_paper() -> torch.nn.Module:
    text, encoder, unet, _, scheduler = paper_parts()
    with torch.device("meta"):
        parts = {"text_encoder": text, "unet": unet(), "scheduler": scheduler}
        # the teacher freezes the text encoder and the UNet
        return Stage1Objective(encoder, StableDiffusionTeacher("SD 2.1 (meta)", parts))


def stage2_paper(trainable: str) -> torch.nn.Module:
    """As ``_train_captioner`` builds it: the stage-1 encoder, ``set_trainable``, and the
    encoder + text encoder inside the objective only when the encoder trains."""
    from vlv_pipeline.params.stage2 import LoraParams, trainable_parts

    text, encoder, _, llm, _ = paper_parts()
    text.requires_grad_(False).eval()
    with torch.device("meta"):
        decoder = CaptionDecoder(llm(), text.config.hidden_size)
        lora = yaml.safe_load((ROOT / "conf/paper/parameters.yml").read_text())["stage2"].get(
            "lora", {}
        )
        set_trainable(decoder, encoder, trainable_parts(trainable), LoraParams(**lora))
    if "encoder" in trainable:
        return Stage2Objective(decoder, encoder, text)
    return Stage2Objective(decoder)


def fmt_m(n: int) -> str:
    return f"{n / 1e6:9.1f}M"


def fmt_gb(b: int) -> str:
    return f"{b / GB:7.2f}"


def print_table(rows: list[tuple[str, str, dict]]) -> None:
    head = (
        f"{'stage':7s} {'trainable setting':30s} {'trainable':>10s} {'frozen':>10s} "
        f"{'before GB':>9s} {'after GB':>9s} {'ratio':>8s}  after holds (+ optimizer.bin)"
    )
    print(head)
    print("-" * len(head))
    for stage, setting, s in rows:
        before = s["before_weights"] + s["adam"]
        after = s["after_weights"] + s["adam"]
        print(
            f"{stage:7s} {setting:30s} {fmt_m(s['trainable']):>10s} {fmt_m(s['frozen']):>10s} "
            f"{fmt_gb(before):>9s} {fmt_gb(after):>9s} {before / after:7.2f}x  {s['holds']}"
        )
    print()
    print("  of which (GB): weights before / weights after / AdamW state (same in both)")
    for stage, setting, s in rows:
        print(
            f"  {stage:7s} {setting:30s} {fmt_gb(s['before_weights'])} / "
            f"{fmt_gb(s['after_weights'])} / {fmt_gb(s['adam'])}"
        )


def print_components(title: str, objective: torch.nn.Module) -> None:
    print(f"  {title}")
    for label, t, f, dtype in components(objective):
        print(f"    {label:42s} trainable {fmt_m(t)}  frozen {fmt_m(f)}  {dtype}")


# ----------------------------------------------------------------- the tiny measured case


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def tiny_stage1_world():
    """The default world's stage-1 objective: the shipped teacher, conf/base's encoder (a
    small encoder on the teacher VAE's frozen encoder), fed cached latents."""
    from vlv_pipeline.models.teachers import load_teacher
    from vlv_pipeline.params.stage1 import EncoderParams
    from vlv_pipeline.pipelines.stage1.nodes import build_encoder

    conf = yaml.safe_load((ROOT / "conf/base/parameters_stage1.yml").read_text())["stage1"]
    model = yaml.safe_load((ROOT / "conf/base/globals.yml").read_text())["t2i"]  # params:t2i
    t2i = load_teacher(str(ROOT / model), "float32")
    torch.manual_seed(0)
    encoder = build_encoder(
        EncoderParams(**conf["encoder"]),
        t2i.width,
        t2i.vae,
        t2i.text_encoder.get_input_embeddings().weight,
    )
    objective = Stage1Objective(
        encoder,
        t2i,
        tuple(conf["timestep_range"]) if conf.get("timestep_range") else None,
        features_from_cache=getattr(encoder, "reads_vae_latents", False),
    )
    vae = t2i.vae.config
    side = encoder.config.image_size // 2 ** (len(vae.block_out_channels) - 1)
    return objective, _batches((0,), (vae.latent_channels, side, side))


def tiny_stage1_florence():
    """The paper's classes built tiny (``gpu_smoke.TINY``): Florence-2 as the VLV encoder
    (tied token embeddings, frozen DaViT), a CLIP text encoder and a UNet, fed pixels."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from gpu_smoke import TINY
    from transformers import CLIPTextConfig, CLIPTextModel

    # wider than TINY and a 4096-token vocabulary (tied: shared, embed_tokens, lm_head), so
    # that tensor payloads, not per-tensor headers, make up the files
    florence = {
        "vision_config": {**TINY["florence"]["vision_config"], "embed_dim": [32, 64]},
        "text_config": {
            **TINY["florence"]["text_config"],
            "vocab_size": 4096,
            "d_model": 64,
            "encoder_ffn_dim": 256,
            "decoder_ffn_dim": 256,
        },
        "image_token_id": 4095,
    }
    florence["vision_config"]["projection_dim"] = 64
    torch.manual_seed(0)
    encoder = Florence2VLVEncoder(
        florence_config=florence,
        num_queries=TINY["queries"],
        out_dim=TINY["text"]["hidden_size"],
        prompt_ids=tuple(range(4, 4 + TINY["prompt_tokens"])),
    )
    text = CLIPTextModel(CLIPTextConfig(**TINY["text"]))
    unet = UNet2DConditionModel(**TINY["unet"])
    parts = {"text_encoder": text, "unet": unet, "scheduler": DDPMScheduler()}
    objective = Stage1Objective(encoder, StableDiffusionTeacher("tiny SD", parts))
    side, down = TINY["resolution"], 2 ** (len(TINY["vae"]["block_out_channels"]) - 1)
    return objective, _batches((3, side, side), (4, side // down, side // down))


def _batches(pixels: tuple[int, ...], latent: tuple[int, ...]) -> list[tuple]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, 256, pixels, generator=g, dtype=torch.uint8),
            torch.randn(latent, generator=g),
            torch.rand(latent, generator=g) + 0.1,
        )
        for _ in range(4)
    ]


def measure(build, old_layout: bool) -> tuple[dict, dict[str, int]]:
    """One real ``train()`` step with checkpoint_every 1: (the formula's sizes, the bytes of
    each file in checkpoint-1)."""
    from vlv_pipeline.params.training import TrainParams
    from vlv_pipeline.training.loop import train

    objective, data = build()
    predicted = sizes(objective)
    params = TrainParams(
        steps=1, batch_size=2, learning_rate=1e-4, checkpoint_every=1, trackers=[], log_every=1
    )
    register = checkpoint.register
    if old_layout:  # no save hook: Accelerate writes the whole objective, as before 716df6b
        checkpoint.register = lambda accelerator, objective: None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train(objective, data, params, checkpoint_dir=tmp, desc="tiny stage 1")
            folder = Path(tmp) / "checkpoint-1"
            files = {
                str(f.relative_to(folder)): f.stat().st_size
                for f in sorted(folder.rglob("*"))
                if f.is_file()
            }
    finally:
        checkpoint.register = register
    return predicted, files


def report_tiny() -> None:
    print(
        "\nAnchor: tiny stage-1 objectives, 1 real train() step with checkpoint_every 1, "
        "checkpoint-1 on disk vs the same formula (MB = 1e6 bytes)"
    )
    print(
        f"  {'objective':36s} {'layout':7s} {'predicted':>9s} {'measured':>9s} {'diff':>6s}"
        f"  {'weights pred/meas':>17s}  {'AdamW pred/meas':>15s}  other files"
    )
    cases = (
        ("default world (teacher, small enc.)", tiny_stage1_world),
        ("paper classes small (Florence-2)", tiny_stage1_florence),
    )
    for title, build in cases:
        for old in (True, False):
            predicted, files = measure(build, old)
            weights = predicted["before_weights"] if old else predicted["after_weights"]
            formula = weights + predicted["adam"]
            measured = sum(files.values())
            opt = sum(v for k, v in files.items() if k.startswith("optimizer"))
            other = {
                k: v
                for k, v in files.items()
                if not k.startswith(("optimizer", "model", "vlv_encoder/"))
            }
            model = measured - opt - sum(other.values())
            print(
                f"  {title:36s} {'before' if old else 'after':7s} {formula / 1e6:9.3f} "
                f"{measured / 1e6:9.3f} {(measured - formula) / formula:+6.1%}"
                f"  {weights / 1e6:8.3f}/{model / 1e6:8.3f}  {predicted['adam'] / 1e6:7.3f}/"
                f"{opt / 1e6:7.3f}  {sum(other.values()) / 1e3:.0f} KB"
            )
        print(
            f"  {'':36s} (trainable {predicted['trainable'] / 1e6:.3f}M, frozen "
            f"{predicted['frozen'] / 1e6:.3f}M; after: {predicted['holds']} + optimizer.bin)"
        )
    print(
        "  before = Accelerate's model.safetensors of the whole objective (the save hook taken "
        "out);\n  other files = scheduler.bin, random_states_0.pkl, history.json (left out of "
        "the formula)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-tiny", action="store_true", help="skip the measured tiny case")
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        "Checkpoint size at paper scale (conf/paper): COMPUTED FROM PARAMETER COUNTS on the "
        "meta device\n(4 bytes per fp32 parameter; AdamW: 2 fp32 tensors per trainable "
        "parameter), not measured on disk.\nbefore = whole objective's weights + AdamW state "
        "(accelerator.save_state of everything);\nafter = trained_models() in save_pretrained "
        "form + AdamW state (training/checkpoint.py). GB = 1e9 bytes.\n"
    )
    rows, objectives = [], {}
    s1 = stage1_paper()
    rows.append(("stage 1", "encoder (paper)", sizes(s1)))
    objectives["stage 1"] = s1
    paper2 = yaml.safe_load((ROOT / "conf/paper/parameters.yml").read_text())["stage2"]
    for setting in STAGE2_SETTINGS:
        objective = stage2_paper(setting)
        mark = " (paper)" if setting == paper2["trainable"] else ""
        rows.append(("stage 2", setting + mark, sizes(objective)))
        objectives[f"stage 2, {setting}"] = objective
    print_table(rows)
    paper = yaml.safe_load((ROOT / "conf/paper/parameters.yml").read_text())
    for stage, _, s in (r for r in rows if "paper" in r[1]):
        keep = paper[stage.replace(" ", "")]["training"]["keep_checkpoints"]
        before, after = s["before_weights"] + s["adam"], s["after_weights"] + s["adam"]
        print(
            f"  {stage}, paper: keep_checkpoints {keep} -> {keep * after / GB:.1f} GB on disk "
            f"(was {keep * before / GB:.1f} GB); {keep + 1} folders while the next one is "
            "written"
        )
    print("\nComponents (parameters; tied tensors once):")
    for title in ("stage 1", f"stage 2, {paper2['trainable']}", "stage 2, projector+lora"):
        print_components(title, objectives[title])
    if not args.no_tiny:
        report_tiny()
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

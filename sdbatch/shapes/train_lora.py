"""Train a tiny LoRA for the embedded shapes model on the CPU: ``make train-lora``.

Why: the LoRA tests need a LoRA whose effect can be judged from pixels. The shapes model draws
six colours (``sdbatch.shapes.world.COLOURS``); this LoRA is trained to draw every shape in a
seventh, orange (255, 140, 0), which the base model never drew. What the shipped file does
(measured, 8 seeds, Euler a, 20 steps): "a blue circle on a white background" stays blue at
weights 0 and 0.25, is half blue, half yellow at 0.5 and orange (about (225, 140, 0)) at 0.75 and
1; green and red shapes turn yellow from 0.5 on (the known colour nearest orange; more training
would move them on), red ones partly orange at 0.25. At weight 0 every picture is the base
model's, bit for bit.

How: the training scenes of the shapes world (same shapes, sizes, positions and backgrounds,
captions naming their original colour, 10% empty captions so the unconditional prediction
turns orange too), each shape drawn in orange. Rank-4 adapters (alpha 4: scale 1) on the UNet's
transformer layers (attention, feed-forward, projections) and the text encoder's attention and
MLP layers, trained with the base model's epsilon loss (min-SNR 5) while every base weight
stays frozen. Seeded (scenes, noise and initial weights); 800 steps of 32 images, about 8
minutes on one free CPU thread (0.55 s a step; 12 minutes on a machine busy with other work).
The result is written in kohya's key layout (``lora_unet_*`` / ``lora_te_text_model_*``,
``lora_down``/``lora_up``/``alpha``), the layout A1111 users' files have, as
``orange.safetensors`` with the command in its metadata.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sdbatch.shapes import world

ORANGE = (255, 140, 0)
UNET_TARGETS = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
EMPTY_PROB = 0.1


def render_orange(scene: world.Scene, size: int = 32) -> np.ndarray:
    """``world.render`` with the shape filled orange (same geometry and anti-aliasing)."""
    big = size * world.SUPERSAMPLE
    img = Image.new("RGB", (big, big), world.BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    geom = world.outline(scene, big)
    if scene.shape == "circle":
        draw.ellipse(geom, fill=ORANGE)
    elif scene.shape == "square":
        draw.rectangle(geom, fill=ORANGE)
    else:
        draw.polygon(geom, fill=ORANGE)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def adapter_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The injected adapter's weights in peft's saved layout (``module.lora_A.weight``)."""
    return {k.replace(".default.", "."): v for k, v in model.state_dict().items() if ".lora_" in k}


def kohya_state_dict(peft_state: dict, prefix: str, rank: int, alpha: float) -> dict:
    """peft's ``module.lora_A.weight`` / ``lora_B`` -> kohya's ``prefix_module.lora_down.weight``
    / ``lora_up`` / ``alpha`` (kohya names a module by its dotted path with "_")."""
    out = {}
    for key, value in peft_state.items():
        for peft, kohya in ((".lora_A.weight", "lora_down"), (".lora_B.weight", "lora_up")):
            if key.endswith(peft):
                name = prefix + key[: -len(peft)].replace(".", "_")
                out[f"{name}.{kohya}.weight"] = value.detach().to(torch.float16).contiguous()
                out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float16)
    return out


def train(out: Path, seed: int, steps: int, batch: int, lr: float, rank: int, threads: int):
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig, inject_adapter_in_model
    from safetensors.torch import save_file

    from sdbatch.models import EMBEDDED_MODEL_PATH
    from sdbatch.shapes import model as sm

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL_PATH, torch_dtype=torch.float32)
    unet, text, vae, tok = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    for m in (unet, text, vae):
        m.requires_grad_(False)
    for m, targets in ((unet, UNET_TARGETS), (text, TE_TARGETS)):
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets), m)
    params = [p for m in (unet, text) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = DDPMScheduler(**sm.noise_schedule())
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    scaling = vae.config.scaling_factor
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    unet.train()
    text.train()
    started, losses = time.perf_counter(), []
    for step in range(steps):
        scenes = [world.sample_scene(rng, "train") for _ in range(batch)]
        pixels = np.stack([render_orange(s) for s in scenes])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        captions = [
            ""
            if rng.random() < EMPTY_PROB
            else world.caption(s, str(rng.choice(world.CAPTION_STYLES)))
            for s in scenes
        ]
        ids = tok(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=g) * scaling
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, len(snr), (batch,), generator=g)
        noisy = sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, text(ids)[0]).sample
        per_image = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        per_image = per_image * torch.clamp(snr[t], max=5.0) / snr[t]
        loss = per_image.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0:
            print(f"step {step + 1}/{steps}  loss {np.mean(losses[-50:]):.4f}", flush=True)
    seconds = time.perf_counter() - started
    state = kohya_state_dict(adapter_weights(unet), "lora_unet_", rank, rank)
    # kohya names text-encoder modules from CLIPTextModel's text_model (transformers 5 folds
    # it away; A1111 and diffusers read the kohya name)
    te = {
        k if k.startswith("text_model.") else f"text_model.{k}": v
        for k, v in adapter_weights(text).items()
    }
    state.update(kohya_state_dict(te, "lora_te_", rank, rank))
    command = (
        f"python -m sdbatch.shapes.train_lora --out {out.name} --seed {seed} --steps {steps} "
        f"--batch {batch} --lr {lr} --rank {rank} --threads {threads}"
    )
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(rank),
        "ss_base_model_version": "sd_v1",
        "sdbatch_training": json.dumps(
            {"command": command, "minutes": round(seconds / 60, 2),
             "final_loss": round(float(np.mean(losses[-50:])), 4), "teaches": "orange shapes"}
        ),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=meta)
    print(f"wrote {out} ({out.stat().st_size:,} bytes) in {seconds / 60:.1f} min")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--out", type=Path, default=Path("examples/webui/models/Lora/orange.safetensors")
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    train(a.out, a.seed, a.steps, a.batch, a.lr, a.rank, a.threads)


if __name__ == "__main__":
    main()

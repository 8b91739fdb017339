"""Train a tiny ControlNet for the embedded shapes model on the CPU: ``make train-controlnet``.

Why: the ControlNet tests and the demo recipe need a ControlNet whose effect can be judged from
pixels. The shapes model puts its shape wherever the seed's noise leads; this ControlNet,
``shapes_position``, takes a position mask (a white box on black where the shape should go)
and moves the shape there, while the prompt still decides its colour, shape and background.

How: ``ControlNetModel.from_unet`` of the embedded UNet (its down blocks and middle block
copied, zero convolutions at zero) with a small condition embedding (8, 16, 32 channels,
32x32 condition -> the 8x8 latent grid). Training scenes are the shapes world's
(``sdbatch.shapes.world``: same shapes, sizes, positions, backgrounds and captions, 10% empty
captions so the unconditional prediction is steered too); each scene's condition is its
shape's bounding box (from ``world.outline``, anti-aliased like ``world.render``), white on
black. A box rather than the shape's silhouette: a silhouette would tell the ControlNet the
shape too, and a circle's mask would then fight a prompt asking for a triangle. UNet, VAE and
text encoder stay frozen; the loss is the base model's epsilon loss (min-SNR 5). Seeded
(scenes, noise, the condition embedding's initial weights); the file is written in fp16 in
diffusers' key layout, with its config in ``shapes_position.config/config.json`` (how sdbatch
loads a single file offline) and the command in its metadata.
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

EMPTY_PROB = 0.1
OUT = Path("examples/webui/models/ControlNet/shapes_position.safetensors")


def position_mask(scene: world.Scene, size: int = 32) -> np.ndarray:
    """(size, size, 3) uint8: the scene's shape's bounding box, white on black, anti-aliased."""
    big = size * world.SUPERSAMPLE
    img = Image.new("RGB", (big, big), (0, 0, 0))
    geom = world.outline(scene, big)
    if isinstance(geom, list):  # a polygon: its bounding box
        xs, ys = [p[0] for p in geom], [p[1] for p in geom]
        geom = (min(xs), min(ys), max(xs), max(ys))
    ImageDraw.Draw(img).rectangle(geom, fill=(255, 255, 255))
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def shape_centre(img: np.ndarray) -> tuple[float, float] | None:
    """(x, y) in pixels of the largest blob that stands out from the border's colour (the
    judge's foreground), or None when nothing stands out."""
    from sdbatch.shapes.judge import MIN_CONTRAST, RING, largest_blob

    x = np.asarray(img, dtype=np.float64)[..., :3]
    h, w, _ = x.shape
    border = np.ones((h, w), dtype=bool)
    border[RING : h - RING, RING : w - RING] = False
    dist = np.linalg.norm(x - np.median(x[border], axis=0), axis=-1)
    if dist.max() < MIN_CONTRAST:
        return None
    ys, xs = np.nonzero(largest_blob(dist > 0.5 * dist.max()))
    return float(xs.mean()), float(ys.mean())


def train(out: Path, seed: int, steps: int, batch: int, lr: float, threads: int) -> Path:
    from diffusers import ControlNetModel, DDPMScheduler, StableDiffusionPipeline
    from safetensors.torch import save_file

    from sdbatch.models import EMBEDDED_MODEL_PATH
    from sdbatch.shapes import model as sm

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    pipe = StableDiffusionPipeline.from_pretrained(EMBEDDED_MODEL_PATH, torch_dtype=torch.float32)
    unet, text, vae, tok = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    for m in (unet, text, vae):
        m.requires_grad_(False)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 32))
    cn.train()
    opt = torch.optim.AdamW(cn.parameters(), lr=lr, weight_decay=0.0)
    sched = DDPMScheduler(**sm.noise_schedule())
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    scaling = vae.config.scaling_factor
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    started, losses = time.perf_counter(), []
    for step in range(steps):
        scenes = [world.sample_scene(rng, "train") for _ in range(batch)]
        pixels = np.stack([world.render(s) for s in scenes])
        masks = np.stack([position_mask(s) for s in scenes])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        cond = torch.from_numpy(masks).permute(0, 3, 1, 2).float() / 255.0  # as pipelines pass it
        captions = [
            ""
            if rng.random() < EMPTY_PROB
            else world.caption(s, str(rng.choice(world.CAPTION_STYLES)))
            for s in scenes
        ]
        ids = tok(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=g) * scaling
            states = text(ids)[0]
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, len(snr), (batch,), generator=g)
        noisy = sched.add_noise(latents, noise, t)
        down, mid = cn(noisy, t, states, controlnet_cond=cond, return_dict=False)
        pred = unet(
            noisy, t, states, down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        ).sample  # fmt: skip
        per_image = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        per_image = per_image * torch.clamp(snr[t], max=5.0) / snr[t]
        loss = per_image.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 50 == 0:
            took = (time.perf_counter() - started) / (step + 1)
            print(f"step {step + 1}/{steps}  loss {np.mean(losses[-50:]):.4f}  {took:.2f} s/step",
                  flush=True)  # fmt: skip
    seconds = time.perf_counter() - started
    command = (
        f"python -m sdbatch.shapes.train_controlnet --out {out.name} --seed {seed} "
        f"--steps {steps} --batch {batch} --lr {lr} --threads {threads}"
    )
    meta = {
        "sdbatch_training": json.dumps(
            {"command": command, "minutes": round(seconds / 60, 2),
             "final_loss": round(float(np.mean(losses[-50:])), 4),
             "teaches": "the shape where the condition's white box is"}
        ),
    }  # fmt: skip
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in cn.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out), metadata=meta)
    cn.save_config(out.with_name(out.stem + ".config"))
    print(f"wrote {out} ({out.stat().st_size:,} bytes) in {seconds / 60:.1f} min")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    train(a.out, a.seed, a.steps, a.batch, a.lr, a.threads)


if __name__ == "__main__":
    main()

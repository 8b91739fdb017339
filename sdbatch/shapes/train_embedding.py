"""Train a textual-inversion embedding for the embedded shapes model, on the CPU, seeded.

The shapes model knows six colour words. This teaches it a seventh, ``fuchsia`` (two CLIP
tokens the model never saw: its token table maps both to the shared "unknown" row), meaning
magenta: only the embedding's vectors are trained, the model stays frozen, exactly what
A1111's textual-inversion training does. The result is the example file
``examples/webui/embeddings/fuchsia.safetensors`` (``emb_params``, A1111's safetensors
layout), which the tests render through sdbatch and judge by pixels.

Data: scenes of the shapes world (every shape and background) recoloured to the target colour,
captioned "a fuchsia circle on a white background" or as tags. The captions are chunked by
sdbatch's own code (``sdbatch.plan.prompts`` with the embedding's lookup) and the vectors are
placed by ``sdbatch.render.embeddings.placed``, so training sees the token positions the
renderer uses. Loss: the model's noise-prediction MSE (min-SNR weighted, as the model was
trained). Same seed and thread count, same bytes (``make train-embedding``, about a minute on
one thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import struct
import time
from pathlib import Path

import numpy as np
import torch

from sdbatch.models import EMBEDDED_MODEL_PATH
from sdbatch.plan.embedding_files import build_lookup
from sdbatch.plan.prompts import CHUNK_LEN, PromptChunk, prompt_chunks
from sdbatch.render.embeddings import EncoderEmbeddings, placed
from sdbatch.shapes import world
from sdbatch.shapes.model import load_tokenizer, noise_schedule

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "examples" / "webui" / "embeddings" / "fuchsia.safetensors"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--word", default="fuchsia", help="the new word (the file's stem)")
    p.add_argument("--colour", default="magenta", choices=list(world.COLOURS))
    p.add_argument("--vectors", type=int, default=2, help="token positions the word takes")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--images", type=int, default=512, help="training scenes (latents cached)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def load_frozen():
    """The embedded model's VAE, UNet and text encoder in float32, frozen."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    kw = {"local_files_only": True, "torch_dtype": torch.float32}
    vae = AutoencoderKL.from_pretrained(EMBEDDED_MODEL_PATH, subfolder="vae", **kw)
    unet = UNet2DConditionModel.from_pretrained(EMBEDDED_MODEL_PATH, subfolder="unet", **kw)
    text = CLIPTextModel.from_pretrained(EMBEDDED_MODEL_PATH, subfolder="text_encoder", **kw)
    for m in (vae, unet, text):
        m.requires_grad_(False)
        m.eval()
    return vae, unet, text


def scenes(args: argparse.Namespace) -> list[world.Scene]:
    rng = np.random.default_rng([args.seed, 1])
    out = []
    for _ in range(args.images):
        scene = world.sample_scene(rng, "all")
        out.append(dataclasses.replace(scene, colour=args.colour))
    return out


def caption_rows(tokenizer, texts: list[str], lookup) -> tuple[torch.Tensor, list[PromptChunk]]:
    """Each caption as the renderer builds it: one chunk, BOS + tokens + EOS + EOS padding."""
    chunks, rows = [], []
    for text in texts:
        (chunk,) = prompt_chunks(tokenizer, text, lookup)
        ids = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]
        rows.append(ids + [tokenizer.eos_token_id] * (CHUNK_LEN + 2 - len(ids)))
        chunks.append(chunk)
    return torch.tensor(rows, dtype=torch.long), chunks


def train(args: argparse.Namespace) -> torch.Tensor:
    from diffusers import DDPMScheduler

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vae, unet, text = load_frozen()
    tokenizer = load_tokenizer()
    lookup = build_lookup(
        {args.word: args.vectors},
        lambda t: tokenizer(t, add_special_tokens=False)["input_ids"],
    )
    word_ids = tokenizer(args.word, add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # start from what the word means without the embedding
        start = text.get_input_embeddings()(torch.tensor(word_ids)).mean(0)
    vec = torch.nn.Parameter(start.repeat(args.vectors, 1).clone())

    data = scenes(args)
    pixels = np.stack([world.render(s) for s in data])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
    rng = np.random.default_rng([args.seed, 2])
    styles = ["tags" if rng.random() < 0.5 else "plain" for _ in data]
    texts = [
        world.caption(dataclasses.replace(s, colour=args.word), style)
        for s, style in zip(data, styles, strict=True)
    ]
    ids, chunks = caption_rows(tokenizer, texts, lookup)

    sched = DDPMScheduler(**noise_schedule())
    ac = sched.alphas_cumprod
    snr = ac / (1 - ac)
    opt = torch.optim.AdamW([vec], lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed)
    t0, recent = time.perf_counter(), []
    for step in range(args.steps):
        pick = torch.randint(0, len(data), (args.batch,), generator=g)
        noise = torch.randn((args.batch, *latents.shape[1:]), generator=g)
        t = torch.randint(0, len(ac), (args.batch,), generator=g)
        noisy = sched.add_noise(latents[pick], noise, t)
        batch_chunks = [chunks[i] for i in pick.tolist()]
        with placed(text, batch_chunks, EncoderEmbeddings(lookup, {args.word: vec})):
            cond = text(ids[pick])[0]
        pred = unet(noisy, t, cond).sample
        per_image = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per_image * torch.clamp(snr[t], max=5.0) / snr[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent.append(float(loss.detach()))
        if (step + 1) % 50 == 0 or step + 1 == args.steps:
            mean = sum(recent) / len(recent)
            secs = time.perf_counter() - t0
            print(f"step {step + 1}/{args.steps}  loss {mean:.4f}  {secs:.0f} s", flush=True)
            recent = []
    return vec.detach().clone()


def save(vec: torch.Tensor, args: argparse.Namespace) -> Path:
    """Write A1111's safetensors layout (``emb_params``) with a sorted header, so the same
    vectors give the same bytes (the safetensors writer orders its metadata at random)."""
    meta = {
        "word": args.word, "colour": args.colour, "model": "sdbatch-shapes",
        "trained_by": "python -m sdbatch.shapes.train_embedding",
        "steps": str(args.steps), "seed": str(args.seed), "threads": str(args.threads),
    }  # fmt: skip
    data = vec.detach().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
    header = {
        "__metadata__": dict(sorted(meta.items())),
        "emb_params": {"dtype": "F32", "shape": list(vec.shape), "data_offsets": [0, len(data)]},
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the header is padded to 8 bytes, as safetensors pads it
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return args.out


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = parse_args(argv)
    out = save(train(args), args)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

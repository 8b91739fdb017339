"""Components of the shapes-world model and their export as a standard diffusers folder.

Why a separate module: ``train_tiny`` (the loop) and its tests need the same architecture,
the same token-table trick and the same export; keeping them here keeps both files short.

Architecture (SD-1.x-shaped: UNet2DConditionModel, AutoencoderKL, CLIPTextModel with the
real 49,408-token CLIP tokenizer, SD 1.5's scaled-linear scheduler config):

- 32x32 RGB images, a VAE downsampling 4x to 8x8x4 latents. An 8x VAE at 64x64 would give
  the UNet the same 8x8 latents (same cost there) but cost ~4x more in the VAE, per training
  step and per decoded image, for a world with no detail to put in the extra pixels.
- Token table: ~20 of CLIP's 49,408 tokens ever occur. While training, the text encoder's
  ``token_embedding`` is swapped for ``CompactEmbedding``: one row per used token plus one
  shared "unknown" row. Optimiser, gradients and EMA then touch ~1.5 k numbers instead of
  3.2 M (97% of the encoder). At export the rows are scattered back into a full 49,408-row
  table, every unused token getting the trained "unknown" row, so the folder is a plain
  ``CLIPTextModel`` that ``StableDiffusionPipeline.from_pretrained`` loads unchanged (a small
  ``vocab_size`` would break the real tokenizer's ids; sparse gradients would still pay for
  EMA and AdamW state over the full table). Training inserts random unknown tokens into some
  captions, so words the model never learnt ("masterpiece") are mostly ignored.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdbatch.models import EMBEDDED_MODEL_PATH
from sdbatch.shapes import world
from sdbatch.shapes.clip_files import (
    MAX_LENGTH,
    SD15_SCHEDULER_CONFIG,
    VOCAB_SIZE,
    folder_bytes,
    write_json,
    write_tokenizer,
)

MODEL_NAME = "sdbatch-shapes"
IMAGE_SIZE = 32
BOS_ID, EOS_ID = VOCAB_SIZE - 2, VOCAB_SIZE - 1  # CLIP's specials end the vocabulary

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 64),  # 3 levels = 4x down: 32x32 -> 8x8
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,  # the default 32 cannot split 16 channels
    sample_size=IMAGE_SIZE,
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 4,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=64,
    attention_head_dim=4,  # SD-1.x semantics: the number of heads
    norm_num_groups=8,  # 32 groups of 32 channels would be instance norm: it drops colour means
)
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=VOCAB_SIZE,
    max_position_embeddings=MAX_LENGTH,
    projection_dim=64,
    bos_token_id=BOS_ID,
    eos_token_id=EOS_ID,
    pad_token_id=EOS_ID,
    layer_norm_eps=1e-5,
)


def build_components(seed: int):
    """Fresh (vae, unet, text_encoder), each seeded on its own; the encoder keeps the full
    token table (``CompactEmbedding`` is swapped in by the trainer)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    return vae, unet, text_encoder


def load_tokenizer():
    """The real CLIP tokenizer, from the embedded model's folder (offline)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(EMBEDDED_MODEL_PATH / "tokenizer", local_files_only=True)


def used_token_ids(tokenizer, words: list[str]) -> list[int]:
    """BOS, EOS and every token of ``words``, sorted."""
    ids = {BOS_ID, EOS_ID}
    for w in words:
        ids.update(tokenizer(w, add_special_tokens=False).input_ids)
    return sorted(ids)


def noise_schedule() -> dict:
    """SD 1.5's noise schedule (scaled-linear betas, 1000 steps): the prototype's DDPM linear
    betas blew up at sampling (latent std 17)."""
    keys = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps")
    return {k: SD15_SCHEDULER_CONFIG[k] for k in keys}


def miscaption(scene: world.Scene, rng: np.random.Generator) -> world.Scene:
    """The scene as a careless captioner describes it: one attribute (colour, shape or
    background, equally likely) named wrongly, never turning it into a held-out combination
    (those captions stay unseen in training)."""
    attr = ("colour", "shape", "background")[int(rng.integers(3))]
    values = {"colour": world.COLOURS, "shape": world.SHAPES, "background": world.BACKGROUNDS}
    choices = []
    for value in values[attr]:
        other = dataclasses.replace(scene, **{attr: value})
        if value != getattr(scene, attr) and other.combo not in world.HELDOUT:
            choices.append(other)
    return choices[int(rng.integers(len(choices)))]


class CaptionTokens:
    """Scenes -> (n, 77) CLIP ids as the pipeline builds them (BOS, text, EOS, EOS padding).

    Some captions are empty (classifier-free guidance needs the unconditional case), some
    name one attribute wrongly (``wrong_prob``: real captions are noisy; a model whose captions
    were always exact ignores the image's own evidence and makes guidance both useless and
    unstable, see the model card), some are written as tags, and some get 1-3 random unused
    tokens inserted: those all share the "unknown" row, which so learns to be ignored.
    """

    def __init__(self, empty_prob: float, unk_prob: float, tags_prob: float,
                 wrong_prob: float = 0.0):  # fmt: skip
        self.tokenizer = load_tokenizer()
        self.used_ids = used_token_ids(self.tokenizer, world.vocabulary())
        self.probs = (empty_prob, unk_prob, tags_prob)
        self.wrong_prob = wrong_prob
        self.unknown_pool = np.setdiff1d(np.arange(BOS_ID), self.used_ids)
        self._cache: dict[str, list[int]] = {}
        self.empty_ids = torch.tensor([[BOS_ID] + [EOS_ID] * (MAX_LENGTH - 1)])

    def __call__(self, scenes: list[world.Scene], rng: np.random.Generator) -> torch.Tensor:
        empty_prob, unk_prob, tags_prob = self.probs
        rows = []
        for scene in scenes:
            ids: list[int] = []
            if rng.random() >= empty_prob:
                if self.wrong_prob and rng.random() < self.wrong_prob:
                    scene = miscaption(scene, rng)
                text = world.caption(scene, "tags" if rng.random() < tags_prob else "plain")
                if text not in self._cache:
                    self._cache[text] = self.tokenizer(text, add_special_tokens=False).input_ids
                ids = list(self._cache[text])
                if rng.random() < unk_prob:
                    for _ in range(int(rng.integers(1, 4))):
                        pos = int(rng.integers(len(ids) + 1))
                        ids.insert(pos, int(rng.choice(self.unknown_pool)))
            ids = [BOS_ID, *ids[: MAX_LENGTH - 2], EOS_ID]
            rows.append(ids + [EOS_ID] * (MAX_LENGTH - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


class CompactEmbedding(nn.Module):
    """Stands in for CLIP's token table: rows for ``used_ids`` plus one shared unknown row."""

    def __init__(self, full: nn.Embedding, used_ids: list[int]):
        super().__init__()
        self.num_embeddings = full.num_embeddings  # what transformers may ask of an embedding
        self.used_ids = list(used_ids)
        remap = torch.full((full.num_embeddings,), len(self.used_ids), dtype=torch.long)
        remap[self.used_ids] = torch.arange(len(self.used_ids))
        self.register_buffer("remap", remap, persistent=False)
        with torch.no_grad():
            rows = torch.cat([full.weight[self.used_ids], full.weight.mean(0, keepdim=True)])
        self.weight = nn.Parameter(rows.clone())

    @property
    def unknown_row(self) -> int:
        return len(self.used_ids)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return nn.functional.embedding(self.remap[input_ids], self.weight)

    def full_table(self) -> torch.Tensor:
        """(vocab, hidden): the unknown row everywhere, the trained rows at their ids."""
        table = self.weight[self.unknown_row].detach().expand(self.num_embeddings, -1).clone()
        table[self.used_ids] = self.weight[: self.unknown_row].detach()
        return table


def compact_text_encoder(text_encoder, used_ids: list[int]) -> CompactEmbedding:
    emb = CompactEmbedding(text_encoder.get_input_embeddings(), used_ids)
    text_encoder.set_input_embeddings(emb)
    return emb


def full_text_encoder(trained, used_ids: list[int], state: dict | None = None):
    """A standard CLIPTextModel from a compact one (``state``: e.g. EMA weights to use)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    state = dict(state if state is not None else trained.state_dict())
    # "text_model.embeddings..." in transformers 4, "embeddings..." in 5: find it by suffix
    (key,) = [k for k in state if k.endswith("embeddings.token_embedding.weight")]
    compact = CompactEmbedding(nn.Embedding(VOCAB_SIZE, TEXT_CONFIG["hidden_size"]), used_ids)
    compact.weight.data.copy_(state.pop(key))
    model = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    state[key] = compact.full_table()
    model.load_state_dict(state, strict=True)
    return model


MODEL_CARD = """\
# {name}

A tiny text-to-image model of the **shapes world**: one circle, square or triangle in one of
six colours ({colours}) on a {backgrounds} background, 32x32 pixels. Prompt it as
`a red circle on a white background` or `red circle, white background`; other words map to a
shared "unknown" token the model learnt to ignore. It is a standard Stable Diffusion 1.x
diffusers folder (`StableDiffusionPipeline.from_pretrained(path)`), runs on a laptop CPU in a
fraction of a second per image, and was trained from scratch on CPU.

| component | class | parameters |
|---|---|---|
| unet | UNet2DConditionModel, channels (32, 64), cross-attention dim 64, 8x8x4 latents | {unet:,} |
| vae | AutoencoderKL, channels (16, 32, 64), 4x down, scaling factor {scaling:.4f} | {vae:,} |
| text_encoder | CLIPTextModel, hidden 64, 2 layers, vocab 49408 ({used} trained) | {text:,} |
| tokenizer | CLIPTokenizer, the real CLIP BPE vocabulary | - |
| scheduler | PNDMScheduler, Stable Diffusion 1.5's config (scaled-linear betas) | - |

Weights: float16 safetensors (the EMA of the UNet and text encoder), {size_mib} MiB.
Size: generate at 32x32 (`size: 32x32`); other sizes change the latent grid it never saw.

## Training

```
{command}
```

{status}

- seed {cfg[seed]}; VAE phase {cfg[vae_steps]} steps (L1 + 1e-6 KL), then UNet + text
  encoder {cfg[unet_steps]} steps: epsilon loss{min_snr}, {cfg[empty_prob]:.0%} empty
  captions, {cfg[wrong_prob]:.0%} naming one attribute wrongly, {cfg[unk_prob]:.0%} with
  unknown tokens, {cfg[tags_prob]:.0%} as tags, AdamW
  (lr {cfg[lr_vae]:g} / {cfg[lr]:g}, cosine), batch {cfg[batch]}, EMA {cfg[ema_decay]};
  then a tune phase of {cfg[tune_steps]} steps: the same data and loss, the learning rate and
  EMA restarted, plus a penalty on the slope of the guidance term (for {cfg[slope_batch]}
  images a step: how much 7 x (cond - uncond) changes when the noisy latent moves 20% of sigma
  towards another training picture's; slopes above {cfg[slope_limit]:g} cost
  {cfg[slope_weight]:g} x excess squared; `sdbatch/shapes/guidance_slope.py`);
  CPU threads {threads}; {minutes:.1f} minutes of training.
- Held out from training (never shown): {heldout}.
- Final mean losses (last 100 steps of each phase): VAE {vae_loss}, UNet {unet_loss},
  tune {tune_loss} (with the penalty).
- torch {torch}, diffusers {diffusers}, transformers {transformers}.
- Loss curve: `training_loss.png`.

## Evaluation

`python -m sdbatch.shapes.evaluate --model <this folder>` renders held-out and training
prompts at 20 steps and judges colour, shape and background from pixels
(`sdbatch.shapes.judge`).

## License

MIT. The tokenizer files are CLIP's BPE vocabulary (via open_clip, MIT).
"""


def export(out: Path, vae, unet, text_encoder, card: dict) -> Path:
    """Write the diffusers folder (fp16 safetensors) with tokenizer, scheduler and model card.

    ``text_encoder`` must already be a standard (full-table) CLIPTextModel. Written to a
    staging folder and swapped in, so a crash never leaves half a model at ``out``.
    """
    import diffusers
    import transformers
    from diffusers.utils import logging as dlogging
    from transformers.utils import logging as tlogging

    out = Path(out)
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    tlogging.disable_progress_bar()
    try:
        for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
            half = copy.deepcopy(model).to(torch.float16)  # the caller's model stays fp32
            half.save_pretrained(stage / name, safe_serialization=True)
    finally:
        dlogging.set_verbosity(verbosity)
        tlogging.enable_progress_bar()
    config_path = stage / "text_encoder" / "config.json"  # load as fp32 by default (see clip_files)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    write_json(config_path, config)

    write_tokenizer(stage / "tokenizer")  # the committed CLIP files (see clip_files)
    write_json(stage / "scheduler" / "scheduler_config.json", SD15_SCHEDULER_CONFIG)
    write_json(
        stage / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "_name_or_path": MODEL_NAME,
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", "PNDMScheduler"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        },
    )
    if card.get("loss_png") and Path(card["loss_png"]).is_file():
        shutil.copyfile(card["loss_png"], stage / "training_loss.png")
    fields = {k: v for k, v in card.items() if k != "loss_png"}
    fields.update(
        {
            k: sum(p.numel() for p in m.parameters())
            for k, m in (("unet", unet), ("vae", vae), ("text", text_encoder))
        },
        name=MODEL_NAME,
        colours=", ".join(world.COLOURS),
        backgrounds=" / ".join(world.BACKGROUNDS),
        heldout="; ".join(" ".join(c) for c in world.HELDOUT_COMBOS),
        scaling=vae.config.scaling_factor,
        size_mib=f"{folder_bytes(stage) / 2**20:.1f}",
        torch=torch.__version__.split("+")[0],
        diffusers=diffusers.__version__,
        transformers=transformers.__version__,
    )
    (stage / "README.md").write_text(MODEL_CARD.format(**fields), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    return out

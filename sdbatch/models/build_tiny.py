"""Build the embedded ``sdbatch-tiny`` pipeline folder (``sdbatch/models/tiny``).

Why this exists: tests, demos and CI must run offline and in seconds, and no real
Stable Diffusion checkpoint may be downloaded. So we ship a *random-weight* pipeline with
exactly the SD-1.x component layout (same classes, same tokenizer, same scheduler config),
but with the tiny shapes of diffusers' own SD pipeline tests. Everything in sdbatch that works
with this folder works with a real SD-1.x folder.

The folder ships in the package (its files feed sdbatch's model hash); this script is how it
was made. Fixed seeds and configs make a rebuild byte-for-byte identical as long as the torch,
diffusers and transformers versions are the same (their init code and config keys may change)::

    python -m sdbatch.models.build_tiny [--bpe PATH] [--out DIR]

The CLIP tokenizer files are converted from open_clip's MIT-licensed
``bpe_simple_vocab_16e6.txt.gz`` (read straight out of the open_clip_torch wheel, or from the
bare ``.txt.gz``), so open-clip-torch is never a dependency. When ``--bpe`` is not given and
the output folder already holds ``tokenizer/vocab.json`` + ``merges.txt``, those are kept.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from sdbatch.models import EMBEDDED_MODEL_NAME, EMBEDDED_MODEL_PATH

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
DEFAULT_BPE_SOURCE = Path("/tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl")

# CLIP's vocabulary: 256 byte chars + 256 "</w>" variants + merges + 2 specials = 49408.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
SEED = 0

# Stable Diffusion 1.5's scheduler/scheduler_config.json, verbatim: recipes that swap
# schedulers derive their config from this one, so it has to be the real thing.
SD15_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": BOS,
    "clean_up_tokenization_spaces": True,
    "do_lower_case": True,
    "eos_token": EOS,
    "errors": "replace",
    "model_max_length": MAX_LENGTH,
    "pad_token": EOS,
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": EOS,
}

SPECIAL_TOKENS_MAP = {"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable-unicode table; its order fixes the first 256 vocab ids."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _read_bpe_gz(source: Path) -> bytes:
    """Gzipped BPE bytes from a wheel/zip (by member name) or from the bare .txt.gz."""
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as zf:
            return zf.read(BPE_MEMBER)
    return source.read_bytes()


def convert_clip_bpe(source: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write Hugging Face CLIPTokenizer ``vocab.json`` + ``merges.txt`` from open_clip's BPE.

    Same selection as open_clip's SimpleTokenizer and HF's CLIPTokenizer: skip the header
    line, keep the first 49152-256-2 merges, vocab = bytes, bytes+'</w>', merges, specials.
    """
    lines = gzip.decompress(_read_bpe_gz(Path(source))).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    if len(merges) != N_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{source}: unexpected BPE merges file layout")

    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ValueError(f"{source}: built {len(vocab)} vocab entries, expected {VOCAB_SIZE}")

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = out_dir / "vocab.json", out_dir / "merges.txt"
    # Compact separators: ~100 kB less than json.dumps' default, same content.
    text = json.dumps(vocab, ensure_ascii=False, separators=(",", ":"))
    vocab_path.write_text(text + "\n", encoding="utf-8")
    with merges_path.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write("#version: 0.2\n")
        fh.writelines(f"{a} {b}\n" for a, b in merges)
    return vocab_path, merges_path


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_tokenizer(tok_dir: Path, bpe_source: Path | None, previous: Path) -> None:
    """Convert the BPE once; on rebuilds reuse the committed vocab/merges (no wheel needed)."""
    old = previous / "tokenizer"
    if bpe_source is None and (old / "vocab.json").is_file() and (old / "merges.txt").is_file():
        tok_dir.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(old / name, tok_dir / name)
    else:
        source = bpe_source or DEFAULT_BPE_SOURCE
        if not source.is_file():
            raise FileNotFoundError(
                f"{source} not found: pass --bpe pointing at an open_clip_torch wheel "
                "or at bpe_simple_vocab_16e6.txt.gz"
            )
        convert_clip_bpe(source, tok_dir)
    _write_json(tok_dir / "tokenizer_config.json", TOKENIZER_CONFIG)
    _write_json(tok_dir / "special_tokens_map.json", SPECIAL_TOKENS_MAP)


def _write_models(root: Path) -> dict[str, int]:
    """Random-init UNet/VAE/CLIP text encoder (diffusers' test shapes), saved as fp16.

    fp16 halves the folder; from_pretrained(torch_dtype=...) upcasts on load. Each component
    is seeded on its own so changing one never changes the others' weights.
    """
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as diffusers_logging
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.utils import logging as transformers_logging

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(SEED)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
    )
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=5,
            num_attention_heads=4,
            vocab_size=VOCAB_SIZE,
            max_position_embeddings=MAX_LENGTH,
            projection_dim=32,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            layer_norm_eps=1e-5,
        )
    )
    # A fresh LayerNorm (weight 1, bias 0) makes every output token average ~0, and A1111's
    # emphasis divides by that mean: weights would flip signs. Trained CLIP has no such
    # degenerate final norm, so give ours seeded, non-trivial parameters.
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    with torch.no_grad():
        final_norm.weight.uniform_(0.5, 1.5)
        final_norm.bias.uniform_(0.2, 0.6)

    params = {}
    # The fp16 cast logs a "modules to keep in float32: []" notice per model: nothing to keep.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()  # a "Writing model shards" bar for one file
    try:
        for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder)):
            params[name] = sum(p.numel() for p in model.parameters())
            model.to(torch.float16).save_pretrained(root / name, safe_serialization=True)
    finally:
        diffusers_logging.set_verbosity(verbosity)
        transformers_logging.enable_progress_bar()

    # transformers records the save dtype in config.json and, when from_pretrained gets no
    # dtype, loads in it (fp16) while diffusers loads its models in fp32: the pipeline would
    # then mix dtypes and fail. Declaring float32 keeps the no-dtype default all-fp32; an
    # explicit torch_dtype still wins. The weights file itself stays fp16.
    config_path = root / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    _write_json(config_path, config)
    return params


def _model_index() -> dict:
    import diffusers

    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "_name_or_path": EMBEDDED_MODEL_NAME,
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


MODEL_CARD = """\
# {name}

A **tiny, random-weight** Stable Diffusion 1.x pipeline embedded in sdbatch so that tests,
demos and CI run fully offline, in seconds, on CPU. It draws noise-like pictures: it has never
been trained, and it is not meant to make meaningful images.

It is a normal diffusers folder (`StableDiffusionPipeline.from_pretrained(path)`), with the
same component classes as SD 1.5:

| component | class | parameters |
|---|---|---|
| unet | UNet2DConditionModel, block_out_channels (32, 64), cross_attention_dim 32 | {unet:,} |
| vae | AutoencoderKL, block_out_channels (32, 64), 4 latent channels | {vae:,} |
| text_encoder | CLIPTextModel, hidden 32, 5 layers, 4 heads, vocab 49408 | {text_encoder:,} |
| tokenizer | CLIPTokenizer, the real CLIP BPE vocabulary (49408 tokens, max length 77) | - |
| scheduler | PNDMScheduler, Stable Diffusion 1.5's scheduler config verbatim | - |

No safety checker and no feature extractor. Weights are stored as float16 safetensors to keep
the folder small; `from_pretrained` upcasts them: float32 by default (the text encoder's
config says `"dtype": "float32"` for that reason), or pass `torch_dtype=torch.float16`. The
VAE downsamples by 2, so the default image size is 64x64 (latents 32x32); about {size_mib}
MiB on disk, most of it the 49408x32 token embedding and the tokenizer's vocab/merges.

## How it was built

`python -m sdbatch.models.build_tiny` (see that file): shapes as in diffusers' own pipeline
tests, random initialisation with `torch.manual_seed({seed})` before each component, built
with diffusers {diffusers}, transformers {transformers}, torch {torch}. `vocab.json` and
`merges.txt` were converted from open_clip's `bpe_simple_vocab_16e6.txt.gz` (open_clip_torch
3.3.0, MIT licence), which is the same BPE as OpenAI CLIP's tokenizer.

## License

MIT (the weights are random; the BPE vocabulary comes from open_clip, MIT).
"""


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder`` (what ships in the wheel, before zip)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def build(out_dir: Path = EMBEDDED_MODEL_PATH, bpe_source: Path | None = None) -> Path:
    """Build the whole folder in a staging dir next to ``out_dir``, then swap it in."""
    import diffusers
    import torch
    import transformers

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".tiny-build-") as tmp:
        stage = Path(tmp) / "tiny"
        _write_tokenizer(stage / "tokenizer", bpe_source, out_dir)
        params = _write_models(stage)
        _write_json(stage / "scheduler" / "scheduler_config.json", SD15_SCHEDULER_CONFIG)
        _write_json(stage / "model_index.json", _model_index())
        card = MODEL_CARD.format(
            size_mib=f"{folder_bytes(stage) / 2**20:.1f}",
            name=EMBEDDED_MODEL_NAME,
            seed=SEED,
            diffusers=diffusers.__version__,
            transformers=transformers.__version__,
            torch=torch.__version__.split("+")[0],
            **params,
        )
        (stage / "README.md").write_text(card, encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(str(stage), str(out_dir))
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EMBEDDED_MODEL_PATH, help="target folder")
    parser.add_argument(
        "--bpe",
        type=Path,
        default=None,
        help="open_clip_torch wheel or bpe_simple_vocab_16e6.txt.gz (default: reuse the "
        f"tokenizer already in --out, else {DEFAULT_BPE_SOURCE})",
    )
    args = parser.parse_args(argv)
    out = build(args.out, args.bpe)
    print(f"built {out} ({folder_bytes(out) / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()

"""Files every embedded model folder shares: the CLIP tokenizer, SD 1.5's scheduler config.

Why a module of its own: the embedded model (``shapes_model.export``) and the config-only
SD 1.5/SDXL folders need byte-for-byte the same tokenizer and scheduler files, and where the
tokenizer came from must stay reproducible. ``vocab.json`` and ``merges.txt`` were converted
once from open_clip's MIT-licensed ``bpe_simple_vocab_16e6.txt.gz`` (read straight out of the
open_clip_torch wheel, or from the bare ``.txt.gz``), so open-clip-torch is never a
dependency; later exports copy the committed files::

    python -m sdbatch.shapes.clip_files --bpe open_clip_torch-3.3.0-py3-none-any.whl --out DIR
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import zipfile
from pathlib import Path

from sdbatch.models import EMBEDDED_MODEL_PATH

BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
DEFAULT_BPE_SOURCE = Path("/tmp/oc/open_clip_torch-3.3.0-py3-none-any.whl")

# CLIP's vocabulary: 256 byte chars + 256 "</w>" variants + merges + 2 specials = 49408.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 49408
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77

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


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_tokenizer(
    tok_dir: Path, bpe_source: Path | None = None, previous: Path = EMBEDDED_MODEL_PATH
) -> None:
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
    write_json(tok_dir / "tokenizer_config.json", TOKENIZER_CONFIG)
    write_json(tok_dir / "special_tokens_map.json", SPECIAL_TOKENS_MAP)


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder`` (what ships in the wheel, before zip)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write CLIP tokenizer files (vocab, merges).")
    parser.add_argument("--out", type=Path, required=True, help="tokenizer folder to write")
    parser.add_argument(
        "--bpe",
        type=Path,
        default=None,
        help="open_clip_torch wheel or bpe_simple_vocab_16e6.txt.gz (default: copy the "
        "embedded model's files)",
    )
    args = parser.parse_args(argv)
    write_tokenizer(args.out, args.bpe)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""``sdbatch-tools prompt TEXT``: how A1111 reads a prompt (weighted runs, tokens per chunk)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sdbatch.errors import UserError


def register(sub) -> None:
    p = sub.add_parser("prompt", help="show how A1111 emphasis and chunking read a prompt")
    p.add_argument("text", help='the prompt, e.g. "a (red:1.2) car BREAK blue sky"')
    p.add_argument("--json", action="store_true", help="print the runs as [[text, weight], ...]")
    p.add_argument("--model", help="diffusers folder whose tokenizer to use (default: embedded)")
    p.set_defaults(func=run)


def _tokenizer(model: str | None):
    """The CLIP tokenizer of a diffusers folder (default: the embedded model's)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import CLIPTokenizer

    from sdbatch.models import EMBEDDED_MODEL_PATH

    root = Path(model) if model else EMBEDDED_MODEL_PATH
    folder = root / "tokenizer"
    if not (folder / "vocab.json").is_file():
        raise UserError(
            f"--model: {str(root)!r} has no tokenizer/vocab.json; give a diffusers folder"
        )
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


def _token_label(tokenizer, token: int, weight: float) -> str:
    """A token as readable text (byte pieces of a multi-byte character show as #id)."""
    text = tokenizer.decode([token]).strip()
    if not text or "\ufffd" in text:
        text = f"#{token}"
    return text if abs(weight - 1) < 1e-9 else f"{text}:{weight:.4g}"


def run(args: argparse.Namespace) -> int:
    from sdbatch.plan.prompts import is_break, parse_attention, prompt_chunks

    runs = parse_attention(args.text)
    if args.json:
        print(json.dumps([[text, weight] for text, weight in runs], ensure_ascii=False))
        return 0
    print("runs (text, weight):")
    for run in runs:
        print("  BREAK" if is_break(run) else f"  {run[0]!r:40} {run[1]:.4g}")
    tokenizer = _tokenizer(args.model)
    chunks = prompt_chunks(tokenizer, args.text)
    for i, chunk in enumerate(chunks, 1):
        print(f"chunk {i}: {len(chunk.tokens)} of 75 tokens")
        shown = [
            _token_label(tokenizer, t, w) for t, w in zip(chunk.tokens, chunk.weights, strict=True)
        ]
        if shown:
            print("  " + " ".join(shown))
    print(
        f"{len(chunks)} chunk{'s' if len(chunks) != 1 else ''} ({77 * len(chunks)} tokens for CLIP)"
    )
    return 0

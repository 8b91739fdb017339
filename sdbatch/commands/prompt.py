"""``sdbatch-tools prompt TEXT``: how A1111 reads a prompt (its per-step schedule when it has
prompt editing, alternation or AND; weighted runs, tokens per chunk)."""

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
    p.add_argument(
        "--steps", type=_positive, default=20,
        help="sampling steps for the schedule of [a:b:when], [a|b] and AND (default 20); A1111 "
        "counts model calls, so give twice the steps for Heun, DPM2, DPM2 a, DPM++ 2S a and "
        "DPM++ SDE",
    )  # fmt: skip
    p.add_argument("--hires-steps", type=_positive, help="also show the hires pass's schedule")
    p.add_argument(
        "--embeddings", metavar="DIR",
        help="an embeddings folder: words naming its files show as <name> over the positions "
        "their vectors take",
    )  # fmt: skip
    p.set_defaults(func=run)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of steps (1 or more)")
    return int(text)


def _schedule(args: argparse.Namespace) -> list[str]:
    """Print the texts A1111 uses step by step when they change during sampling; return the
    distinct texts it encodes (just the prompt when nothing changes)."""
    from sdbatch.plan.prompt_schedule import (
        format_schedule,
        has_scheduling,
        prompt_schedule,
        split_and,
    )

    if not has_scheduling(args.text):
        return [args.text]
    hires = f" + {args.hires_steps} hires" if args.hires_steps else ""
    print(f"schedule ({args.steps}{hires} steps):")
    for line in format_schedule(args.text, args.steps, args.hires_steps):
        print(f"  {line}")
    texts: dict[str, None] = {}  # in order of first use
    for part, _weight in split_and(args.text):
        for hires_steps in (None, args.hires_steps) if args.hires_steps else (None,):
            texts.update(
                dict.fromkeys(t for _, t in prompt_schedule(part, args.steps, hires_steps))
            )
    return list(texts)


def _tokenizers(model: str | None) -> list:
    """The CLIP tokenizers of a diffusers folder (default: the embedded model's): one for
    SD 1.x, two for SDXL (``tokenizer_2``, OpenCLIP-G's), each of which chunks the prompt."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import CLIPTokenizer

    from sdbatch.models import EMBEDDED_MODEL_PATH

    root = Path(model) if model else EMBEDDED_MODEL_PATH
    folder = root / "tokenizer"
    if not (folder / "vocab.json").is_file():
        raise UserError(
            f"--model: {str(root)!r} has no tokenizer/vocab.json; give a diffusers folder"
        )
    folders = [folder] + [root / "tokenizer_2"] * (root / "tokenizer_2" / "vocab.json").is_file()
    return [CLIPTokenizer.from_pretrained(f, local_files_only=True) for f in folders]


def _token_label(tokenizer, token: int, weight: float) -> str:
    """A token as readable text (byte pieces of a multi-byte character show as #id)."""
    text = tokenizer.decode([token]).strip()
    if not text or "\ufffd" in text:
        text = f"#{token}"
    return text if abs(weight - 1) < 1e-9 else f"{text}:{weight:.4g}"


def _embedding_lookup(folder: str | None, tokenizer):
    """A1111's ids lookup for the files of an embeddings folder (headers only; nothing is
    unpickled), or None."""
    if not folder:
        return None
    from sdbatch.plan.embedding_files import build_lookup, read_embedding
    from sdbatch.plan.model_folders import list_files

    counts = {}
    for rel, path in list_files("embeddings", {"embeddings": folder}).items():
        counts.setdefault(
            rel.rsplit("/", 1)[-1], read_embedding(path, "--embeddings", True).vectors
        )

    def tokenize(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    return build_lookup(counts, tokenize)


def _labels(tokenizer, chunk, vectors: dict[str, int]) -> list[str]:
    """Each token as `_token_label`, and each embedding as ``<name>`` (``<name:w>``)."""
    fixes = dict(chunk.fixes)
    shown, i = [], 0
    while i < len(chunk.tokens):
        w = chunk.weights[i]
        if i in fixes:
            name = fixes[i]
            shown.append(f"<{name}>" if abs(w - 1) < 1e-9 else f"<{name}:{w:.4g}>")
            i += vectors[name]
            continue
        shown.append(_token_label(tokenizer, chunk.tokens[i], w))
        i += 1
    return shown


def _show(tokenizers: list, text: str, indent: str, lookup=None) -> None:
    """A text's weighted runs and its 77-token chunks (the first tokenizer's; with SDXL's
    second one, its chunk count too)."""
    from sdbatch.plan.prompts import is_break, parse_attention, prompt_chunks

    tokenizer = tokenizers[0]
    vectors = {name: n for entries in (lookup or {}).values() for _, name, n in entries}
    print(f"{indent}runs (text, weight):")
    for run in parse_attention(text):
        print(f"{indent}  BREAK" if is_break(run) else f"{indent}  {run[0]!r:40} {run[1]:.4g}")
    chunks = prompt_chunks(tokenizer, text, lookup)
    for i, chunk in enumerate(chunks, 1):
        print(f"{indent}chunk {i}: {len(chunk.tokens)} of 75 tokens")
        shown = _labels(tokenizer, chunk, vectors)
        if shown:
            print(f"{indent}  " + " ".join(shown))
    counts = [len(chunks)] + [len(prompt_chunks(t, text, lookup)) for t in tokenizers[1:]]
    k = max(counts)  # the encoders are padded to the longer one (they share a vocabulary)
    plural = "s" if k != 1 else ""
    if len(tokenizers) == 1:
        print(f"{indent}{k} chunk{plural} ({77 * k} tokens for CLIP)")
    else:
        print(f"{indent}{k} chunk{plural} ({77 * k} tokens for each of SDXL's CLIP-L and "
              f"OpenCLIP-G, joined along the channels)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from sdbatch.plan.extra_networks import extra_network_tags, strip_tags
    from sdbatch.plan.prompts import parse_attention

    tags = extra_network_tags([args.text])
    if tags:  # A1111 removes them before it reads emphasis and schedules; so does the renderer
        args.text = strip_tags(args.text)
        if not args.json:
            print(f"extra-network tags (removed before encoding): {' '.join(tags)}")
    runs = parse_attention(args.text)
    if args.json:
        print(json.dumps([[text, weight] for text, weight in runs], ensure_ascii=False))
        return 0
    texts = _schedule(args)
    tokenizers = _tokenizers(args.model)
    lookup = _embedding_lookup(args.embeddings, tokenizers[0])
    if texts == [args.text]:
        _show(tokenizers, args.text, "", lookup)
        return 0
    for i, text in enumerate(texts, 1):  # what A1111 encodes: each text of the schedule
        print(f"text {i} of {len(texts)}: {text!r}")
        _show(tokenizers, text, "  ", lookup)
    return 0

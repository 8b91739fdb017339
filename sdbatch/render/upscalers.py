"""ESRGAN-family upscaler models for the hires fix, without spandrel (it imports torchvision,
which does not import beside our torch).

What A1111's model upscaler names cover: RRDBNet in ESRGAN's old key layout
(``model.0.weight``, ``model.1.sub.N.RDBk.convj.0.weight``), Real-ESRGAN's new one
(``conv_first``, ``body.N.rdbk.convj``, ``conv_up1``...) and BSRGAN's (``RRDB_trunk``), with
Real-ESRGAN's pixel-unshuffle inputs (x2plus: 2x, and 1x models); and SRVGGNetCompact
(``body.N.weight`` with PReLU; the General v3 and AnimeVideo models). Scale, features, blocks
and channels are read from the state dict. Images go in as A1111 feeds them: BGR in [0, 1].

Tiling: the picture is cut into 192 px tiles (A1111's default ``ESRGAN_tile``), each run with
16 px of its neighbours around it for context and only its own part kept, so memory stays
bounded at any size and seams vanish for models whose reach is under 16 px (SRVGG with up to
14 convolutions; deeper models differ at seams by a little). The result is resized to the
hires target as A1111's ``Upscaler.upscale`` does: the model up to three times until the
picture is at least the target size, then Lanczos to it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

TILE = 192  # input pixels per tile (A1111's ESRGAN_tile default)
CONTEXT = 16  # input pixels of context around each tile (a multiple of 4: unshuffle aligns)
MAX_PASSES = 3  # A1111 applies a model at most three times to reach the target


@dataclass(frozen=True)
class Arch:
    """What was detected in a state dict (for messages and tests)."""

    name: str  # "RRDBNet" or "SRVGGNetCompact"
    scale: int  # net scale: output pixels per input pixel
    in_ch: int
    out_ch: int
    features: int
    blocks: int  # RRDB blocks, or SRVGG body convolutions
    unshuffle: int = 1  # Real-ESRGAN's pixel-unshuffle of the input (x2plus: 2)


class _DenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        for j in range(1, 6):
            out = nf if j == 5 else gc
            setattr(self, f"conv{j}", nn.Conv2d(nf + (j - 1) * gc, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for j in range(1, 5):
            feats.append(F.leaky_relu(getattr(self, f"conv{j}")(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, nf: int, gc: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = (_DenseBlock(nf, gc) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN: RRDB trunk, nearest-neighbour 2x up-convolutions."""

    def __init__(self, arch: Arch, gc: int, ups: int):
        super().__init__()
        self.unshuffle = arch.unshuffle
        nf = arch.features
        self.conv_first = nn.Conv2d(arch.in_ch * arch.unshuffle**2, nf, 3, 1, 1)
        self.body = nn.ModuleList(_RRDB(nf, gc) for _ in range(arch.blocks))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.ups = nn.ModuleList(nn.Conv2d(nf, nf, 3, 1, 1) for _ in range(ups))
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, arch.out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        f = self.unshuffle
        if f > 1:  # reflect-pad to a multiple of 4 (as spandrel, so A1111), crop back after
            x = F.pad(x, (0, -w % 4, 0, -h % 4), mode="reflect")
            x = F.pixel_unshuffle(x, f)
        feat = self.conv_first(x)
        trunk = feat
        for block in self.body:
            trunk = block(trunk)
        feat = feat + self.conv_body(trunk)
        for conv in self.ups:
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        out = self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))
        scale = 2 ** len(self.ups) // f
        return out[..., : h * scale, : w * scale]


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN Compact: convolutions with PReLU at input size, pixel shuffle at the end,
    plus the nearest-neighbour upscaled input."""

    def __init__(self, arch: Arch):
        super().__init__()
        nf, s = arch.features, arch.scale
        layers: list[nn.Module] = [nn.Conv2d(arch.in_ch, nf, 3, 1, 1), nn.PReLU(nf)]
        for _ in range(arch.blocks):
            layers += [nn.Conv2d(nf, nf, 3, 1, 1), nn.PReLU(nf)]
        layers.append(nn.Conv2d(nf, arch.out_ch * s * s, 3, 1, 1))
        self.body = nn.Sequential(*layers)
        self.scale = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.pixel_shuffle(self.body(x), self.scale)
        return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")


# ------------------------------------------------------------------ state dict -> model

_OLD_RDB = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
_BSR_RDB = re.compile(r"RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)$")
_NEW_RDB = re.compile(r"body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$")
_UP = re.compile(r"(?:conv_up|upconv)(\d)\.(weight|bias)$")


def _unwrap(state: dict) -> dict:
    """The tensors of a training checkpoint: Real-ESRGAN's ``params_ema`` (or ``params``),
    other trainers' ``state_dict``/``model``/``net``; DataParallel's ``module.`` dropped."""
    for key in ("params_ema", "params-ema", "params", "state_dict", "model", "net"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


def _old_to_new(state: dict) -> dict:
    """ESRGAN's old ``model.N`` layout in Real-ESRGAN's names."""
    seq = sorted({int(k.split(".")[1]) for k in state if re.match(r"model\.\d+\.", k)})
    rdb = [m for k in state if (m := _OLD_RDB.match(k))]
    nb = max(int(m.group(1)) for m in rdb) + 1
    last = seq[-1]
    ups = (last - 4) // 3  # conv, shortcut, [upsample, conv, act] x ups, conv, act, conv
    names = {0: "conv_first", last - 2: "conv_hr", last: "conv_last"}
    names.update({3 * n: f"conv_up{n}" for n in range(1, ups + 1)})
    out = {}
    for k, v in state.items():
        if m := _OLD_RDB.match(k):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = v
        elif k.startswith(f"model.1.sub.{nb}."):
            out[f"conv_body.{k.rsplit('.', 1)[1]}"] = v
        elif (i := int(k.split(".")[1])) in names and k.count(".") == 2:
            out[f"{names[i]}.{k.rsplit('.', 1)[1]}"] = v
        else:
            raise ValueError(f"unexpected key {k!r} for an ESRGAN model")
    return out


def _bsrgan_to_new(state: dict) -> dict:
    rename = {"trunk_conv": "conv_body", "HRconv": "conv_hr"}
    out = {}
    for k, v in state.items():
        if m := _BSR_RDB.match(k):
            k = f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"
        else:
            head, _, tail = k.rpartition(".")
            k = f"{rename.get(head, head)}.{tail}"
        out[k] = v
    return out


def detect(state: dict) -> tuple[Arch, nn.Module]:
    """The model a state dict holds, built with its weights; ValueError when it is none of
    the ESRGAN family."""
    state = _unwrap(state)
    if "model.0.weight" in state and any(".conv1x1." in k for k in state):
        raise ValueError("ESRGAN+ (conv1x1 blocks) is not supported")
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        state = _old_to_new(state)
    elif "RRDB_trunk.0.RDB1.conv1.weight" in state:
        state = _bsrgan_to_new(state)
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        return _rrdb(state)
    if "body.0.weight" in state and "body.1.weight" in state:
        return _compact(state)
    raise ValueError(
        "not an ESRGAN-family model (no RRDBNet conv_first/body.0.rdb1 or model.0/model.1.sub "
        "keys, no SRVGGNetCompact body.0/body.1 keys)"
    )


def _rrdb(state: dict) -> tuple[Arch, nn.Module]:
    first, last = state["conv_first.weight"], state["conv_last.weight"]
    nf, in_ch, out_ch = first.shape[0], first.shape[1], last.shape[0]
    nb = 1 + max(int(m[1]) for k in state if (m := _NEW_RDB.match(k)))
    gc = state["body.0.rdb1.conv1.weight"].shape[0]
    ups = sorted(int(m[1]) for k in state if (m := _UP.match(k)) and m[2] == "weight")
    unshuffle = 1
    if in_ch in (out_ch * 4, out_ch * 16):  # Real-ESRGAN x2plus / x1: pixel-unshuffled input
        unshuffle = int(math.isqrt(in_ch // out_ch))
        in_ch = out_ch
    scale = 2 ** len(ups) // unshuffle
    if scale < 1:
        raise ValueError(f"{len(ups)} up-convolutions cannot undo a {unshuffle}x unshuffle")
    arch = Arch("RRDBNet", scale, in_ch, out_ch, nf, nb, unshuffle)
    model = RRDBNet(arch, gc, len(ups))
    renamed = {}
    for k, v in state.items():
        if m := _UP.match(k):
            k = f"ups.{int(m[1]) - 1}.{m[2]}"
        renamed[k] = v
    model.load_state_dict(renamed, strict=True)
    return arch, model


def _compact(state: dict) -> tuple[Arch, nn.Module]:
    highest = max(int(k.split(".")[1]) for k in state if k.startswith("body."))
    first = state["body.0.weight"]
    nf, in_ch = first.shape[0], first.shape[1]
    channels = state[f"body.{highest}.weight"].shape[0]
    shuffles = [(c, math.isqrt(channels // c)) for c in dict.fromkeys((in_ch, 3, 4, 1))]
    fits = [(c, s) for c, s in shuffles if s * s * c == channels]
    if not fits:
        raise ValueError(f"its last layer's {channels} channels are no pixel shuffle")
    out_ch, scale = fits[0]  # as many channels out as in, where that fits
    arch = Arch("SRVGGNetCompact", scale, in_ch, out_ch, nf, (highest - 2) // 2)
    model = SRVGGNetCompact(arch)
    model.load_state_dict(state, strict=True)
    return arch, model


def load_state(path: str | Path) -> dict:
    """A file's tensors: ``.safetensors``, or a pickle read with ``weights_only=True`` (the
    planner already applied the pickle policy, sdbatch.plan.weights.check_weights_file)."""
    p = Path(path)
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p), device="cpu")
    state = torch.load(p, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"holds a {type(state).__name__}, not a state dict")
    return state


def load_model(path: str | Path, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """The upscaler in ``path``, in eval mode on ``device``; ValueError if it is not one."""
    _arch, model = detect(load_state(path))
    return model.eval().to(device, dtype)


# ------------------------------------------------------------------------- upscaling


def run_tiled(model: nn.Module, x: torch.Tensor, tile: int = TILE, context: int = CONTEXT):
    """``model(x)`` for a (1, C, H, W) tensor, tile by tile: each ``tile`` px square runs with
    ``context`` px of its neighbours and keeps its own part of the output. ``tile`` <= 0: in
    one piece."""
    h, w = x.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        return model(x)
    out = None
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
            ya, xa = max(y0 - context, 0), max(x0 - context, 0)
            yb, xb = min(y1 + context, h), min(x1 + context, w)
            part = model(x[..., ya:yb, xa:xb])
            s = part.shape[-1] // (xb - xa)
            if out is None:
                out = x.new_zeros((x.shape[0], part.shape[1], h * s, w * s))
            out[..., y0 * s : y1 * s, x0 * s : x1 * s] = part[
                ..., (y0 - ya) * s : (y1 - ya) * s, (x0 - xa) * s : (x1 - xa) * s
            ]
    return out


def model_upscale(model: nn.Module, image: Image.Image, tile: int = TILE) -> Image.Image:
    """One pass of the model over an RGB picture, as A1111 feeds it (BGR, [0, 1], rounded
    back to 8 bits)."""
    param = next(model.parameters())
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    x = torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1)))[None]
    with torch.inference_mode():
        y = run_tiled(model, x.to(param.device, param.dtype), tile)
    arr = y[0].float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0)[..., ::-1]
    return Image.fromarray((arr * 255).round().astype(np.uint8), "RGB")


def upscale_to(image: Image.Image, width: int, height: int, step) -> Image.Image:
    """A1111's ``images.resize_image`` + ``Upscaler.upscale`` for hires fix: ``step`` (one
    model pass, or a resize by the scale) until at least the target, at most three times,
    then Lanczos to the multiple-of-8 size and to the target."""
    scale = max(width / image.width, height / image.height)
    if scale > 1:
        dest = (int(image.width * scale // 8 * 8), int(image.height * scale // 8 * 8))
        for _ in range(MAX_PASSES):
            shape = image.size
            image = step(image, scale)
            if image.size == shape or (image.width >= dest[0] and image.height >= dest[1]):
                break
        if image.size != dest:
            image = image.resize(dest, Image.LANCZOS)
    if image.size != (width, height):
        image = image.resize((width, height), Image.LANCZOS)
    return image


def nearest_step(image: Image.Image, scale: float) -> Image.Image:
    """A1111's "Nearest" upscaler pass."""
    size = (int(image.width * scale), int(image.height * scale))
    return image.resize(size, Image.NEAREST)


def hires_resize(image: Image.Image, width: int, height: int, hires, models: dict, device):
    """The first pass's picture at the hires target, by ``hires.upscaler`` (not a latent
    mode): Lanczos and None resize once (as sdbatch always did for ``lanczos``), Nearest and
    model upscalers follow A1111's loop. ``models``: the renderer's cache, file -> model (an
    upscaler runs in fp32 on the render device: fp16 RRDB trunks can overflow)."""
    if hires.upscaler in ("lanczos", "None"):
        return image.resize((width, height), Image.LANCZOS)
    if hires.upscaler == "Nearest":
        return upscale_to(image, width, height, nearest_step)
    model = models.get(hires.upscaler_file)
    if model is None:
        model = models[hires.upscaler_file] = load_model(hires.upscaler_file, device, torch.float32)
    return upscale_to(image, width, height, lambda im, _scale: model_upscale(model, im))

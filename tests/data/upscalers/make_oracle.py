"""How the files in this folder were made (not run by the tests).

Random-weight upscaler files of the three layouts sdbatch.render.upscalers reads, and, for each,
a fixed input and spandrel's output for it: the reference the tests hold sdbatch's module to.
spandrel imports torchvision, which does not import beside sdbatch's torch, so this runs in a
separate environment with torch, torchvision, spandrel and safetensors installed:

    python tests/data/upscalers/make_oracle.py tests/data/upscalers

Weights are stored in fp16 (small files); both loaders widen them to fp32 alike. The last
convolution's bias is raised so the random models' outputs span [0, 1] instead of clamping to
black, which would make the comparison weak.
"""

import importlib.util
import math
import sys
from pathlib import Path

import spandrel
import torch
from safetensors.torch import save_file
from spandrel.architectures.Compact import Compact as SpandrelCompact
from spandrel.architectures.ESRGAN import ESRGAN as SpandrelESRGAN

HERE = Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location(
    "upscalers", HERE.parents[2] / "sdbatch" / "render" / "upscalers.py"
)
ups = importlib.util.module_from_spec(spec)
sys.modules["upscalers"] = ups
spec.loader.exec_module(ups)


def real_esrgan_layout(nf: int, nb: int, scale: int, unshuffle: int = 1) -> dict:
    """Real-ESRGAN's RRDBNet keys (conv_first, body.N.rdbK.convJ, conv_up1, ...)."""
    arch = ups.Arch("RRDBNet", scale, 3, 3, nf, nb, unshuffle)
    model = ups.RRDBNet(arch, 32, int(math.log2(scale * unshuffle)))
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("ups."):
            _, i, kind = k.split(".")
            k = f"conv_up{int(i) + 1}.{kind}"
        out[k] = v
    return out


def esrgan_layout(nf: int, nb: int, scale: int) -> dict:
    """ESRGAN's old keys (model.0, model.1.sub.N.RDBK.convJ.0, ...), from spandrel's model."""
    model = SpandrelESRGAN(in_nc=3, out_nc=3, num_filters=nf, num_blocks=nb, scale=scale)
    return dict(model.state_dict())


def compact_layout(nf: int, nc: int, scale: int) -> dict:
    model = SpandrelCompact(num_in_ch=3, num_out_ch=3, num_feat=nf, num_conv=nc, upscale=scale)
    state = dict(model.state_dict())
    for k, v in state.items():  # PReLU slopes differ per channel, not all 0.25
        if v.ndim == 1 and k.endswith("weight"):
            state[k] = torch.rand_like(v) * 0.5
    return state


def brighten(state: dict, last: str) -> dict:
    state[f"{last}.bias"] = state[f"{last}.bias"] + 0.5
    return state


CASES = {
    "esrgan_old_x4_nf8_nb1.pth": lambda: brighten(esrgan_layout(8, 1, 4), "model.10"),
    "realesrgan_x2plus_nf8_nb1.safetensors": lambda: brighten(
        real_esrgan_layout(8, 1, 2, unshuffle=2), "conv_last"
    ),
    "compact_x4_nf8_nc4.safetensors": lambda: compact_layout(8, 4, 4),
}


def main(out: Path) -> None:
    torch.manual_seed(0)
    for name, make in CASES.items():
        state = {k: v.half().contiguous() for k, v in make().items()}
        path = out / name
        if path.suffix == ".pth":
            torch.save(state, path)
        else:
            save_file(state, str(path))
        model = spandrel.ModelLoader().load_from_file(str(path)).eval()
        x = torch.rand(1, 3, 18, 22, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            y = model(x)  # clamped to [0, 1], padded to the size requirements, as A1111 calls it
        arch, mine = ups.detect(ups.load_state(path))
        with torch.no_grad():
            diff = (mine.eval()(x).clamp(0, 1) - y).abs().max().item()
        save_file(
            {"input": x, "output": y.contiguous()},
            str(out / f"{path.stem}.spandrel.safetensors"),
            metadata={"architecture": model.architecture.id, "scale": str(model.scale),
                      "tags": ",".join(model.tags)},
        )  # fmt: skip
        print(f"{name}: spandrel {model.architecture.id} {model.tags} x{model.scale}; "
              f"sdbatch {arch}; out {tuple(y.shape)} in [{y.min():.3f}, {y.max():.3f}]; "
              f"max abs diff {diff:.3g}")  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))

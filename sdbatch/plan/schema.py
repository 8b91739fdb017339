"""The typed configuration: the schema Hydra composes recipes against, and what the planner and
the runner take (``OmegaConf.to_object`` gives an ``SdbatchConfig``). Pure dataclasses.

Every field has a type and a default, and this is the one place the defaults live, so a
misspelt key fails at compose time with Hydra's own message. Sweep axes are typed ``Any``
because each accepts a scalar *or* a list (OmegaConf has no unions); ``sdbatch.plan.recipe``
validates their values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any


@dataclass
class ModelConfig:
    path: str | None = None  # checkpoint file or diffusers folder; None (and no dir) = tiny model
    dir: str | None = None  # folder of checkpoints like A1111's models/Stable-diffusion
    name: Any = None  # with dir: file stem(s), a list sweeps models; else infotext "Model:"
    vae: str | None = None  # VAE override: .safetensors file or diffusers VAE folder
    clip_skip: int = 1  # A1111 numbering: 1 = last CLIP layer, 2 = penultimate (SD 1.x)
    allow_pickle: bool = False  # load .ckpt/.pt/.bin pickles, which can run code when loaded


@dataclass
class FoldersConfig:
    """A1111's model folders (see sdbatch.plan.model_folders); each also from SDBATCH_<KEY>."""

    a1111: str | None = None  # an A1111/Forge install root: finds all the folders below
    checkpoints: str | None = None  # default models/Stable-diffusion (used when model.name is set)
    lora: str | None = None  # default models/Lora and models/LyCORIS
    embeddings: str | None = None  # default embeddings/
    vae: str | None = None  # default models/VAE (model.vae by file stem)
    upscalers: str | None = None  # default models/ESRGAN and models/RealESRGAN
    controlnet: str | None = None  # default models/ControlNet (controlnet units' model names)


@dataclass
class HiresConfig:
    scale: float = 1.0  # 1 = off; 2 = render at size, upscale 2x, img2img at the target size
    upscaler: str = "latent"  # latent | lanczos | A1111's other names (sdbatch.plan.upscalers)
    steps: int = 0  # second-pass steps; 0 = the same as `steps`
    denoise: float = 0.7  # img2img strength of the second pass (A1111's default 0.7)


@dataclass
class RunConfig:
    dry_run: bool = False  # print the plan and the first jobs, write nothing
    device: str = "auto"  # auto | cpu | cuda | cuda:N  (auto: CUDA when present)
    dtype: str = "auto"  # auto | fp32 | fp16 | bf16  (auto: fp16 on CUDA, fp32 on CPU)
    retry_failed: bool = False  # re-run jobs whose row says failed/nan
    verify: str = "hash"  # resume check of finished images: hash (sha256) | size (faster)
    progress: bool = True  # tqdm progress bar on stderr
    show_jobs: int = 5  # how many jobs a dry run lists
    deadline: str | None = None  # stop cleanly after the batch in flight: "07:00" or "6h"
    max_jobs: int = 1_000_000  # a bigger plan is refused before it is built (raise it here)
    strict_prompts: bool = False  # prompt forms sdbatch cannot honour yet are errors, not warnings
    compile: bool = False  # torch.compile the UNet, only in runs of 2000+ batches (benchmarks)


@dataclass
class ShardConfig:
    index: int = 0  # this worker's shard: batches index, index+count, index+2*count, ...
    count: int = 1  # number of shards; the union of all shards is the unsharded run


@dataclass
class OutputConfig:
    dir: str = "outputs/${name}"  # images/ and manifest/ go here; same command, same place


@dataclass
class SdbatchConfig:
    name: str = "untitled"  # recipe name: names the output folder and the manifest's recipe
    model: ModelConfig = field(default_factory=ModelConfig)
    folders: FoldersConfig = field(default_factory=FoldersConfig)
    prompt: Any = None  # a prompt or a list of prompts
    template: Any = None  # a template (or list) using {var} names from `vars`
    vars: dict[str, Any] = field(default_factory=dict)  # variable -> list of values
    negative_prompt: str = ""
    sampler: Any = "Euler a"  # A1111 sampler name(s)
    schedule_type: Any = "Automatic"  # A1111 1.9+'s "Schedule type"(s); Automatic: per sampler
    steps: Any = 20
    cfg: Any = 7.0  # classifier-free guidance scale(s); 0 and 1 turn guidance off
    size: Any = "512x512"  # WIDTHxHEIGHT, each a multiple of 8
    seeds: Any = 0  # a seed, a list, or {start: S, count: N}
    subseed: Any = None  # A1111's variation seed (used when subseed_strength > 0)
    subseed_strength: float = 0.0  # 0..1; with it every image keeps the first seed (A1111)
    rng: str = "cpu"  # noise source: cpu (same image on any device) | gpu (A1111's default)
    hires: HiresConfig = field(default_factory=HiresConfig)
    # img2img / inpainting (sdbatch.plan.image_inputs; docs/image-inputs.md)
    init_images: Any = None  # a folder, a glob or a list of pictures: a sweep axis
    denoise: Any = 0.75  # A1111's "Denoising strength"(s), 0..1, with init_images
    masks: Any = None  # a folder or glob of masks matched to init_images by file stem, or one file
    mask_blur: int = 4  # A1111's "Mask blur" (Gaussian sigma in pixels)
    inpainting_mask_invert: Any = "Inpaint masked"  # or "Inpaint not masked" (A1111's Mask mode)
    resize_mode: Any = "Just resize"  # Just resize | Crop and resize | Resize and fill
    inpainting_fill: Any = "original"  # masked content: fill | original | latent noise | ...nothing
    inpaint_full_res: Any = False  # A1111's inpaint area "Only masked" (true) or whole picture
    inpaint_full_res_padding: int = 32  # "Only masked padding, pixels"
    # ControlNet units (sdbatch.plan.controlnet; docs/image-inputs.md#controlnet)
    # [{model, image, weight, guidance_start, guidance_end, control_mode, resize_mode, module,
    #   processor_res, threshold_a, threshold_b, pixel_perfect}]: keys checked by
    #   sdbatch.plan.controlnet
    controlnet: list[Any] = field(default_factory=list)
    batch_size: int = 4  # images per forward pass (jobs sharing model/size/sampler/steps/cfg)
    run: RunConfig = field(default_factory=RunConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    grids: list[Any] = field(default_factory=list)  # [{x: vars.style, y: cfg}] drawn at the end


def as_config(cfg: SdbatchConfig | Mapping | Any) -> SdbatchConfig:
    """The typed config from what a caller has: an ``SdbatchConfig`` (as is), Hydra's composed
    ``DictConfig`` or a plain mapping (tests, tools). Missing keys take the defaults above, the
    one place defaults live; a value of the wrong type is one line naming its key."""
    if isinstance(cfg, SdbatchConfig):
        return cfg
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from sdbatch.errors import UserError

    if not OmegaConf.is_config(cfg):
        sections = {
            f.name
            for f in fields(SdbatchConfig)
            if f.default_factory is not MISSING and is_dataclass(f.default_factory())
        }
        cfg = {k: v for k, v in dict(cfg).items() if not (k in sections and v is None)}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SdbatchConfig), cfg))
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        head = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{key}: {head}") from None

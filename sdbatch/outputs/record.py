"""What a finished job leaves behind, in one place: its PNG (carrying A1111's infotext) and its
manifest row. The runner, the repair of lost rows and the tools all make rows here, so the
columns of a row are decided once (``sdbatch.outputs.manifest.SCHEMA`` types them).

A row is the job (everything that decides the pixels), its result (status, image, timings) and
the run's context (device, dtype, versions, the Hydra job and overrides).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

from sdbatch import __version__
from sdbatch.outputs.infotext import format_infotext, png_info
from sdbatch.plan.recipe import Job
from sdbatch.plan.samplers import a1111_names, resolve_sampler

INFOTEXT_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
    "VAE hash", "VAE", "Variation seed", "Variation seed strength", "Denoising strength",
    "Clip skip", "RNG", "Mask mode", "Mask blur", "Inpaint area", "Masked area padding",
    "Masked content", "Hires upscale", "Hires steps", "Hires upscaler",
    *(f"ControlNet {i}" for i in range(64)), "Lora hashes", "TI hashes", "Version",
)  # fmt: skip
# What a render gives a row, and what the run knows about itself
RESULT_FIELDS = frozenset(
    {"status", "image", "image_sha256", "error", "note", "started", "finished", "duration_s"}
)
CONTEXT_FIELDS = frozenset(
    {"device", "dtype", "sdbatch_version", "torch_version", "diffusers_version", "hydra_job",
     "overrides"}
)  # fmt: skip


def infotext_for(job: Job) -> str:
    """A1111's infotext for a job, in A1111's key order.

    The sampler as A1111 1.9+ writes it, split from its schedule: ``Sampler: DPM++ 2M, Schedule
    type: Karras`` for the job "DPM++ 2M Karras", ``Sampler: DPM++ 2M, Schedule type: Uniform``
    for the bare (uniform) "DPM++ 2M", ``Schedule type: Automatic`` where the sampler keeps its
    own timesteps (DDIM, PLMS, UniPC, LCM). The manifest's ``sampler`` column keeps the job's
    combined name, as before. Images sdbatch wrote before schedule types say ``Sampler: DPM++ 2M
    Karras`` with no Schedule type; both read back alike (sdbatch.plan.samplers.from_infotext).
    """
    sampler, schedule_type = a1111_names(resolve_sampler(job.sampler))
    params = {
        "Steps": job.steps,
        "Sampler": sampler,
        "Schedule type": schedule_type,
        "CFG scale": job.cfg,
        "Seed": job.seed,
        "Size": f"{job.width}x{job.height}",
        **job.model.infotext(),
        **job.extras.infotext(),
        **job.networks.infotext(),  # Lora hashes, TI hashes
        **(job.image.infotext() if job.image else {}),  # Denoising strength, Mask blur, ...
        **(job.control.infotext() if job.control else {}),  # ControlNet 0, ControlNet 1, ...
        "Version": f"sdbatch {__version__}",
    }
    rank = {k: i for i, k in enumerate(INFOTEXT_ORDER)}
    ordered = dict(sorted(params.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    return format_infotext(job.prompt, job.negative_prompt, ordered)


def encode_png(pixels, infotext: str) -> bytes:
    """uint8 (H, W, 3) array -> PNG bytes carrying A1111's ``parameters`` chunk."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", pnginfo=png_info(infotext))
    return buf.getvalue()


def make_row(job: Job, recipe: str, batch: int, context: Mapping, **result) -> dict:
    """The manifest row of ``job`` (batch ``batch`` of recipe ``recipe``): the job's fields, the
    ``result`` of rendering it (``status`` and what it produced) and the run's ``context``."""
    unknown = (set(result) - RESULT_FIELDS) | (set(context) - CONTEXT_FIELDS)
    if unknown:
        raise TypeError(f"not manifest row fields: {sorted(unknown)}")
    if "status" not in result:
        raise TypeError("a row needs a status")
    row = {
        "job_id": job.job_id,
        "recipe": recipe,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "template": job.template,
        "vars": list(job.vars),
        "sampler": job.sampler,
        "scheduler": job.scheduler,
        "steps": job.steps,
        "cfg": job.cfg,
        "seed": job.seed,
        "width": job.width,
        "height": job.height,
        "model": job.model.name,
        "model_hash": job.model.hash,
        "subseed": job.extras.subseed if job.extras.subseed_strength > 0 else None,
        "subseed_strength": job.extras.subseed_strength or None,
        "rng": job.extras.rng,
        "hires": job.extras.hires.describe() if job.extras.hires else None,
        "loras": [
            {"name": u.name, "hash": u.hash, "te_weight": u.te_weight, "unet_weight": u.unet_weight}
            for u in job.networks.loras
        ],
        "embeddings": [{"name": u.name, "hash": u.hash} for u in job.networks.embeddings],
        **_image_columns(job),
        "controlnet": job.control.columns() if job.control else [],
        "batch": batch,
        "image": None,
        "image_sha256": None,
        "error": None,
        "note": None,
        "infotext": infotext_for(job),
        "dtype": job.extras.dtype,
        **context,
    }
    row.update(result)
    return row


def _image_columns(job: Job) -> dict:
    """The input picture and mask (paths as planned, content sha256) and the strength; nulls
    for txt2img jobs."""
    image = job.image
    if image is None:
        return dict.fromkeys(("init_image", "init_image_sha256", "mask", "mask_sha256", "denoise"))
    f = image.file
    return {
        "init_image": f.path, "init_image_sha256": f.sha256, "mask": f.mask,
        "mask_sha256": f.mask_sha256, "denoise": image.denoise,
    }  # fmt: skip

"""A1111's schedule types on diffusers' schedulers (sdbatch.render.schedulers.a1111_schedule):
the sigmas each scheduler steps over are A1111's, steps follow k-diffusion's loops, and an
explicit schedule type changes the image. CPU, the embedded model's shapes, random weights."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from sdbatch.errors import RecipeError  # noqa: E402
from sdbatch.plan import schedule_types as st  # noqa: E402
from sdbatch.plan.samplers import BASE_SAMPLERS, plan_sampler  # noqa: E402
from sdbatch.render.schedulers import build_scheduler  # noqa: E402
from tests.tiny import SD15_SCHEDULER, tiny_unet, tiny_vae  # noqa: E402

TABLE = st.model_sigmas_from_betas()  # SD's sigmas, as A1111 builds them
STEPS = 4

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning"),
]


def computed() -> list:
    """Every runnable sampler x schedule type whose sigmas sdbatch computes."""
    out = []
    for base in BASE_SAMPLERS:
        for label in st.SCHEDULE_TYPES:
            try:
                s = plan_sampler(base, label)
            except RecipeError:
                continue
            if s.schedule_type and s not in out:
                out.append(s)
    return out


def _distinct(values) -> np.ndarray:
    return np.array([k for k, _ in itertools.groupby(float(v) for v in values)])


def _kdiffusion_t(sigmas) -> np.ndarray:
    return np.interp(np.log(sigmas), np.log(TABLE.astype(np.float64)), np.arange(len(TABLE)))


def test_every_computed_schedule_is_a1111s():
    """The sigmas each scheduler steps over are schedule_types.sigmas' (the sampler's discard
    included), and the UNet is asked at k-diffusion's timesteps (whole ones for DPMSolver),
    for every sampler x schedule type sdbatch computes, at 2 and 20 steps."""
    base = diffusers.PNDMScheduler.from_config(SD15_SCHEDULER).config
    for s in computed():
        sched = build_scheduler(s, base, seeds=[0])
        sampler = s.name.removesuffix(f" {s.schedule_type}")
        for steps in (2, 20):
            sched.set_timesteps(steps)
            want = st.sigmas(s.schedule_type, steps, TABLE, sampler=sampler)
            got, case = _distinct(sched.sigmas), f"{s.name}, {steps} steps"
            assert got.shape == _distinct(want).shape, case
            np.testing.assert_allclose(got, _distinct(want), rtol=2e-7, atol=0, err_msg=case)
            calls = sched.timesteps.double().cpu().numpy()
            if sched.order == 2:  # second-order layouts: entry 0, then every second call
                calls = np.concatenate([calls[:1], calls[2::2]])
            assert len(calls) == len(want) - 1, case
            tol = 0.5 if s.cls == "DPMSolverMultistepScheduler" else 1e-3
            np.testing.assert_allclose(calls, _kdiffusion_t(want[:-1]), atol=tol, err_msg=case)


def test_align_your_steps_follows_the_models_family():
    base = diffusers.PNDMScheduler.from_config(SD15_SCHEDULER).config
    s = plan_sampler("Euler", "Align Your Steps")
    for family in ("sd1", "sdxl"):
        sched = build_scheduler(s, base, family=family)
        sched.set_timesteps(10)
        want = st.sigmas("Align Your Steps", 10, TABLE, family=family)
        np.testing.assert_allclose(sched.sigmas.double().numpy(), want, rtol=1e-6)
    assert st.AYS_SIGMAS["sd1"][1] != st.AYS_SIGMAS["sdxl"][1]


def test_custom_sigmas_passed_by_a_caller_are_kept():
    base = diffusers.PNDMScheduler.from_config(SD15_SCHEDULER).config
    sched = build_scheduler(plan_sampler("Euler", "Karras"), base)
    sched.set_timesteps(sigmas=[10.0, 1.0, 0.0])
    assert sched.sigmas.tolist() == [10.0, 1.0, 0.0]


def _heun_loop(sigmas, x, denoise):
    """k-diffusion's sample_heun (no churn), written out."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (x - denoise(x, s)) / s
        if s_next == 0:
            x = x + d * (s_next - s)
        else:
            x_2 = x + d * (s_next - s)
            d_2 = (x_2 - denoise(x_2, s_next)) / s_next
            x = x + (d + d_2) / 2 * (s_next - s)
    return x


def _euler_ancestral_loop(sigmas, x, denoise, noise):
    """k-diffusion's sample_euler_ancestral (eta 1), written out."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        up = min(s_next, (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5)
        down = (s_next**2 - up**2) ** 0.5
        x = x + (x - denoise(x, s)) / s * (down - s)
        if s_next > 0:
            x = x + noise(x.shape) * up
    return x


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [("Heun", "SGM Uniform"), ("Heun", "Karras"), ("Euler a", "KL Optimal"), ("Euler a", "Beta")],
)
def test_computed_schedules_step_like_k_diffusion(sampler, schedule):
    """diffusers' step on the rebuilt tables equals k-diffusion's loop on A1111's sigmas."""
    sched = build_scheduler(plan_sampler(sampler, schedule), SD15_SCHEDULER)
    sched.set_timesteps(6)

    def eps(model_input):  # a smooth stand-in for a UNet; depends on the scaled input only
        return torch.tanh(model_input) * 0.7 + 0.1

    def denoise(x, sigma):  # the same model as k-diffusion's CompVis denoiser sees it
        return x - sigma * eps(x / (sigma**2 + 1) ** 0.5)

    x0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    noisy = {"generator": torch.Generator().manual_seed(1)} if sampler == "Euler a" else {}
    x = x0 * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(eps(sched.scale_model_input(x, t)), t, x, **noisy).prev_sample
    sigmas = [float(v) for v in st.sigmas(schedule, 6, TABLE).astype(np.float32)]
    if sampler == "Heun":
        want = _heun_loop(sigmas, x0 * sigmas[0], denoise)
    else:
        gen = torch.Generator().manual_seed(1)
        noise = lambda shape: torch.randn(shape, generator=gen, dtype=torch.float64)  # noqa: E731
        want = _euler_ancestral_loop(sigmas, x0 * sigmas[0], denoise, noise)
    np.testing.assert_allclose(x.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)


def _write_tokenizer(path):
    """A CLIP BPE vocabulary with no merges: one token per printable ASCII character."""
    chars = [chr(c) for c in range(33, 127)]
    tokens = ["<|startoftext|>", "<|pad|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer.from_pretrained(path, model_max_length=77)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            hidden_size=64,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=1000,
            projection_dim=64,
        )  # fmt: skip
    )
    p = diffusers.StableDiffusionPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=_write_tokenizer(tmp_path_factory.mktemp("tokenizer")),
        unet=tiny_unet(),
        scheduler=diffusers.PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    p.set_progress_bar_config(disable=True)
    yield p
    torch.set_num_threads(threads)


def _render(pipe, scheduler, steps=STEPS, **kwargs):
    pipe.scheduler = scheduler
    out = pipe(
        "a red cat",
        num_inference_steps=steps,
        height=64,
        width=64,
        output_type="np",
        generator=[torch.Generator("cpu").manual_seed(11)],
        **kwargs,
    )
    return out.images[0]


def test_an_explicit_schedule_type_changes_the_image_and_is_diffusers_on_those_sigmas(pipe):
    base = pipe.scheduler.config
    karras = _render(pipe, build_scheduler(plan_sampler("Euler", "Karras"), base), 8)
    uniform = _render(pipe, build_scheduler(plan_sampler("Euler", "Uniform"), base), 8)
    # the random tiny VAE saturates most pixels, so the difference is a few grey levels
    assert np.abs(karras - uniform).max() > 3 / 255, "Karras and Uniform gave the same image"
    # Euler + Karras is diffusers' own Euler handed exactly A1111's Karras sigmas
    plain = diffusers.EulerDiscreteScheduler.from_config(base, timestep_spacing="linspace")
    sigmas = st.sigmas("Karras", 8, TABLE).tolist()
    assert np.array_equal(karras, _render(pipe, plain, 8, sigmas=sigmas))
    assert not np.array_equal(uniform, _render(pipe, plain, 8, sigmas=sigmas))


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [
        ("Euler a", "Karras"),
        ("LMS", "KL Optimal"),
        ("Heun", "Exponential"),
        ("DPM2 a", "Beta"),
        ("DPM++ SDE", "Align Your Steps"),
        ("DPM++ 2M", "Simple"),
        ("DPM++ 3M SDE", "Automatic"),
        ("DPM++ 2M SDE Heun", "Uniform"),
        ("LCM", "Automatic"),
    ],
)
def test_every_layout_renders_and_repeats(pipe, sampler, schedule):
    base = pipe.scheduler.config
    s = plan_sampler(sampler, schedule)
    first = _render(pipe, build_scheduler(s, base, seeds=[11]))
    assert np.isfinite(first).all() and np.ptp(first) > 0.05, s.name
    assert np.array_equal(first, _render(pipe, build_scheduler(s, base, seeds=[11])))

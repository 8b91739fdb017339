"""Every A1111 sampler runs end to end through a tiny StableDiffusionPipeline on CPU.

The pipeline is built here from diffusers' test-style dummy components (random weights, a
hand-written CLIP vocabulary): nothing is downloaded.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from sdbatch.plan.samplers import SAMPLERS  # noqa: E402
from sdbatch.render.schedulers import build_scheduler  # noqa: E402
from tests.tiny import SD15_SCHEDULER, tiny_unet, tiny_vae  # noqa: E402

STEPS = 4
ONE_LEVEL = 1 / 255 + 1e-6  # one 8-bit grey level, on the [0, 1] image
PROMPTS, SEEDS = ["a red cat", "a blue dog"], [11, 22]
NOISY = ["Euler a", "DPM2 a", "DPM++ SDE", "DPM++ 2M SDE"]

pytestmark = [
    # diffusers' schedulers hand torch tensors to numpy: thousands of NumPy 2 deprecation notes.
    pytest.mark.filterwarnings("ignore:__array:DeprecationWarning"),
    # torchsde, when float32 rounding puts a query a hair below the Brownian tree's start.
    pytest.mark.filterwarnings("ignore:Should have ta>=t0:UserWarning"),
]


def _write_tokenizer(path):
    """A CLIP BPE vocabulary with no merges: one token per printable ASCII character."""
    chars = [chr(c) for c in range(33, 127)]  # byte-level BPE maps these bytes to themselves
    tokens = ["<|startoftext|>", "<|pad|>", "<|endoftext|>", *chars, *(c + "</w>" for c in chars)]
    (path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer.from_pretrained(path, model_max_length=77)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """(pipeline, the model's scheduler config). One CPU thread: far faster on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    unet = tiny_unet()
    vae = tiny_vae()
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=2,
            pad_token_id=1,
            hidden_size=64,  # the embedded UNet's cross-attention width
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=5,
            vocab_size=1000,
            projection_dim=64,
        )
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_write_tokenizer(tmp_path_factory.mktemp("tokenizer")),
        unet=unet,
        scheduler=diffusers.PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    yield pipe, pipe.scheduler.config
    torch.set_num_threads(threads)


def _run(sd, name, prompts, seeds, generator=None):
    pipe, base = sd
    pipe.scheduler = build_scheduler(SAMPLERS[name], base, seeds)
    if generator is None:  # the normal case: one generator per image
        generator = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    out = pipe(
        prompts,
        num_inference_steps=STEPS,
        height=64,
        width=64,
        output_type="np",
        generator=generator,
    )
    return out.images


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_sampler_runs_and_repeats_bit_for_bit(sd, name):
    first = _run(sd, name, PROMPTS[:1], SEEDS[:1])
    scheduler = sd[0].scheduler
    assert type(scheduler).__name__ == SAMPLERS[name].cls
    assert {k: scheduler.config[k] for k in SAMPLERS[name].options} == SAMPLERS[name].options
    assert first.shape == (1, 64, 64, 3)
    assert np.isfinite(first).all()
    assert np.ptp(first) > 0.05, "a flat image"
    again = _run(sd, name, PROMPTS[:1], SEEDS[:1])
    assert np.array_equal(first, again)


@pytest.mark.parametrize("name", NOISY)
def test_batch_matches_single_calls(sd, name):
    batch = _run(sd, name, PROMPTS, SEEDS)
    assert np.abs(batch[0] - batch[1]).max() > 0.05
    for i, (prompt, seed) in enumerate(zip(PROMPTS, SEEDS, strict=True)):
        single = _run(sd, name, [prompt], [seed])[0]
        assert np.abs(batch[i] - single).max() <= ONE_LEVEL, (name, i)


def test_shared_noise_sources_break_batch_invariance(sd):
    """Controls for the test above: per-image noise is what keeps a batch equal to single calls."""
    # Euler a with one generator for the whole batch: image 0's step noise is not its own.
    shared = _run(sd, "Euler a", PROMPTS, SEEDS, generator=torch.Generator("cpu").manual_seed(11))
    assert np.abs(shared[0] - _run(sd, "Euler a", PROMPTS[:1], SEEDS[:1])[0]).max() > 4 * ONE_LEVEL
    # DPM++ SDE with one int noise_sampler_seed: one Brownian tree spans the batch, so image 1
    # gets the tail of seed 11's noise instead of seed 22's.
    pipe, base = sd
    single = _run(sd, "DPM++ SDE", PROMPTS[1:], SEEDS[1:])[0]
    options = SAMPLERS["DPM++ SDE"].options
    pipe.scheduler = diffusers.DPMSolverSDEScheduler.from_config(
        base, **options, noise_sampler_seed=SEEDS[0]
    )
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    kwargs = dict(num_inference_steps=STEPS, height=64, width=64, output_type="np")
    one_tree = pipe(PROMPTS, generator=generators, **kwargs).images
    assert np.abs(one_tree[1] - single).max() > 4 * ONE_LEVEL


def test_dpm_sde_needs_seeds_and_takes_an_int_for_one_image():
    base = diffusers.PNDMScheduler.from_config(SD15_SCHEDULER).config
    with pytest.raises(ValueError, match="one seed per image"):
        build_scheduler(SAMPLERS["DPM++ SDE"], base)
    assert build_scheduler(SAMPLERS["DPM++ SDE"], base, 7).config.noise_sampler_seed == [7]
    assert build_scheduler("dpm++ 2s a", base, [1, 2]).config.noise_sampler_seed == [1, 2]


def test_model_scheduler_config_cannot_change_what_a_name_means():
    base = diffusers.DPMSolverMultistepScheduler.from_config(
        {
            **SD15_SCHEDULER,
            "algorithm_type": "sde-dpmsolver++",
            "solver_order": 3,
            "use_karras_sigmas": True,
            "timestep_spacing": "leading",
            "prediction_type": "v_prediction",
        }
    ).config
    euler = build_scheduler(SAMPLERS["Euler"], base).config
    assert (euler.use_karras_sigmas, euler.timestep_spacing) == (False, "linspace")
    dpm = build_scheduler(SAMPLERS["DPM++ 2M"], base).config
    assert (dpm.algorithm_type, dpm.solver_order, dpm.use_karras_sigmas) == (
        "dpmsolver++",
        2,
        False,
    )
    # What describes the model stays.
    assert euler.prediction_type == dpm.prediction_type == "v_prediction"
    assert euler.beta_schedule == "scaled_linear"


def test_building_from_the_previous_schedulers_config_changes_nothing():
    """A runner may pass ``pipe.scheduler.config`` of the last batch as the base: same result."""
    base = diffusers.DDIMScheduler.from_config(
        {**SD15_SCHEDULER, "prediction_type": "v_prediction", "rescale_betas_zero_snr": True}
    ).config
    names = list(SAMPLERS)

    def public(config):
        return {k: v for k, v in config.items() if not k.startswith("_")}

    for before, name in zip(names[-1:] + names[:-1], names, strict=True):
        previous = build_scheduler(before, base, [5, 6]).config
        chained = public(build_scheduler(name, previous, [1]).config)
        assert chained == public(build_scheduler(name, base, [1]).config), (before, name)
        # The model's own keys survive, even through classes that do not take them.
        assert (chained["prediction_type"], chained["rescale_betas_zero_snr"]) == (
            "v_prediction",
            True,
        )


def _a1111_sigmas(steps, karras, discard_next_to_last):
    """k-diffusion's schedule as A1111 calls it (CompVisDenoiser.get_sigmas / get_sigmas_karras)."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    alphas_cumprod = np.cumprod(1 - betas)
    log_sigmas = np.log(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)
    n = steps + discard_next_to_last
    if karras:
        lo, hi = np.exp(log_sigmas[0]) ** (1 / 7), np.exp(log_sigmas[-1]) ** (1 / 7)
        sigmas = (hi + np.linspace(0, 1, n) * (lo - hi)) ** 7
    else:
        t = np.linspace(999, 0, n)
        low, w = np.floor(t).astype(int), t % 1
        sigmas = np.exp((1 - w) * log_sigmas[low] + w * log_sigmas[np.ceil(t).astype(int)])
    sigmas = np.append(sigmas, 0.0)
    return np.delete(sigmas, -2) if discard_next_to_last else sigmas


@pytest.mark.parametrize("name", [n for n, s in SAMPLERS.items() if s.exact])
def test_exact_samplers_follow_a1111s_schedule(name):
    scheduler = build_scheduler(SAMPLERS[name], SD15_SCHEDULER, seeds=[0])
    scheduler.set_timesteps(20)
    if name in ("DDIM", "PLMS"):  # A1111 1.6+: t = 951, 901, ..., 51 evaluated, last step to t=1
        assert sorted({int(t) for t in scheduler.timesteps}) == list(range(51, 1000, 50))
        return
    # Second-order schedulers list each sigma twice; keep one of each.
    got = np.array([k for k, _ in itertools.groupby(scheduler.sigmas.double().tolist())])
    want = _a1111_sigmas(20, "Karras" in name, name.startswith("DPM2"))
    assert got.shape == want.shape
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=1e-4)


def _kdiffusion_dpm2(sigmas, x, denoise, ancestral, noise):
    """k-diffusion's sample_dpm_2 / sample_dpm_2_ancestral (eta 1), written out."""
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        up = (s_next**2 * (s**2 - s_next**2) / s**2) ** 0.5 if ancestral else 0.0
        down = (s_next**2 - up**2) ** 0.5
        d = (x - denoise(x, s)) / s
        if down == 0:  # the last step: Euler to sigma 0
            x = x + d * (down - s)
        else:
            mid = float(np.exp((np.log(s) + np.log(down)) / 2))
            x_mid = x + d * (mid - s)
            x = x + (x_mid - denoise(x_mid, mid)) / mid * (down - s)
        if ancestral and s_next > 0:
            x = x + noise(x.shape) * up
    return x


@pytest.mark.parametrize("name", ["DPM2", "DPM2 a", "DPM2 Karras", "DPM2 a Karras"])
def test_dpm2_family_steps_like_a1111(name):
    """Every step of diffusers + sdbatch.render.schedulers equals k-diffusion's loop on A1111's
    sigmas (steps + 1 of them, the next-to-last dropped): same sigmas, midpoints, noise and
    result."""
    ancestral = " a" in name
    scheduler = build_scheduler(SAMPLERS[name], SD15_SCHEDULER)
    scheduler.set_timesteps(10)
    assert len(scheduler.timesteps) == 2 * 10 - 1  # 9 two-call steps, then one Euler step

    def eps(model_input):  # a smooth stand-in for a UNet; depends on the scaled input only
        return torch.tanh(model_input) * 0.7 + 0.1

    def denoise(x, sigma):  # the same model as k-diffusion's CompVis denoiser sees it
        return x - sigma * eps(x / (sigma**2 + 1) ** 0.5)

    x0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    noisy = {"generator": torch.Generator().manual_seed(1)} if ancestral else {}
    x = x0 * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(eps(scheduler.scale_model_input(x, t)), t, x, **noisy).prev_sample
    sigmas = _a1111_sigmas(10, "Karras" in name, True)
    ref_gen = torch.Generator().manual_seed(1)
    want = _kdiffusion_dpm2(
        sigmas,
        x0 * sigmas[0],
        denoise,
        ancestral,
        lambda shape: torch.randn(shape, generator=ref_gen, dtype=torch.float32),
    )
    np.testing.assert_allclose(x.numpy(), want.numpy(), rtol=2e-3, atol=2e-3)


def _a1111_timesteps_loop(x, eps, steps, plms):
    """A1111 1.6+'s ddim / plms (sd_samplers_timesteps_impl, eta 0), written out."""
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    ac = np.cumprod(1 - betas)
    ts = np.clip(np.arange(0, 1000, 1000 // steps) + 1, 0, 999)
    old, calls = [], []

    def model(x, t):
        calls.append(int(t))
        return eps(x, t)

    def to_prev(x, e, i):  # from ts[i] to ts[i - 1]
        a, a_prev = ac[ts[i]], ac[ts[i - 1]]
        x0 = (x - (1 - a) ** 0.5 * e) / a**0.5
        return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * e

    for i in range(len(ts) - 1, 0, -1):
        e = model(x, ts[i])
        if plms and not old:  # pseudo improved Euler
            e_prime = (e + model(to_prev(x, e, i), ts[i - 1])) / 2
        elif plms and len(old) == 1:
            e_prime = (3 * e - old[-1]) / 2
        elif plms and len(old) == 2:
            e_prime = (23 * e - 16 * old[-1] + 5 * old[-2]) / 12
        elif plms:
            e_prime = (55 * e - 59 * old[-1] + 37 * old[-2] - 9 * old[-3]) / 24
        else:
            e_prime = e
        x = to_prev(x, e_prime, i)
        old = (old + [e])[-3:]
    return x, calls


@pytest.mark.parametrize("steps", [20, 30])
@pytest.mark.parametrize("name", ["DDIM", "PLMS"])
def test_ddim_and_plms_step_like_a1111(name, steps):
    """diffusers + sdbatch.render.schedulers equals A1111's loop: the same timesteps evaluated
    (30 steps: 30 calls from t=991, where diffusers' own grid starts at 958), the same result."""
    scheduler = build_scheduler(SAMPLERS[name], SD15_SCHEDULER)
    scheduler.set_timesteps(steps)

    def eps(x, t):  # a smooth stand-in for a UNet that depends on the timestep too
        return torch.tanh(x) * 0.7 + 0.1 + float(t) / 2000

    x0 = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x, calls = x0.clone(), []
    for t in scheduler.timesteps:
        calls.append(int(t))
        x = scheduler.step(eps(x, t), t, x).prev_sample
    want, want_calls = _a1111_timesteps_loop(x0.clone(), eps, steps, name == "PLMS")
    assert calls == want_calls
    assert calls[0] == (951 if steps == 20 else 991) and 1 not in calls
    np.testing.assert_allclose(x.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)

"""Train the shapes-world model on CPU and write it as a diffusers folder (``make train-tiny``).

Why: sdbatch's embedded model should draw real, checkable pictures offline. This trains an
SD-1.x-shaped pipeline (see ``shapes_model`` for the architecture and why) from the
procedural shapes world in about an hour on two CPU cores::

    python -m sdbatch.shapes.train --out build/sdbatch-shapes --work build/shapes-work

Phase 1 trains the VAE alone (L1 + 1e-6 KL), then fixes its latent scaling factor (1 / std
of the latents, as SD's 0.18215 was chosen). Phase 2 trains UNet and text encoder jointly on
the frozen VAE's latents: epsilon loss (min-SNR-5 weighted), SD 1.x's scaled-linear betas,
10% empty captions (for classifier-free guidance), 35% of captions naming one attribute
wrongly (real captions are noisy; with exact captions the model ignores what the noisy image
already shows, and CFG 7 both stops helping and destabilises multistep samplers), AdamW, EMA
of the weights. Phase 3 ("tune") goes on with the same data and loss from a restarted learning
rate and EMA, plus a penalty on how steeply the guidance term changes along the directions
pictures differ in (``guidance_slope``): without it PLMS's 4th-order extrapolation oscillates
on the stiff guided ODE at CFG 7 (see the model card).

Reproducible and resumable: batch k of the data, its noise, timesteps and caption choices
are functions of (seed, k) alone, and a checkpoint (weights, EMA, optimiser state, losses)
is written every ``--ckpt-every`` steps to ``<work>/checkpoints``; rerunning the same command
continues from the latest one. Schedules are in steps, not minutes, so the same command with
the same thread count (``make train-tiny`` pins 2) gives the same weights on the same kind of
CPU; another thread count or CPU changes float rounding, and with it the bits (the model card
says how much that moved its sampler table). ``--minutes`` only caps the total training time
(summed over resumes): at the cap the run checkpoints, exports what it has and says so.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sdbatch.shapes import model as sm
from sdbatch.shapes import world
from sdbatch.shapes.guidance_slope import guidance_slope
from sdbatch.shapes.judge import accuracy, judge
from sdbatch.shapes.plot import plot_losses
from sdbatch.shapes.threads import ThreadPicker
from sdbatch.shapes.train_config import RESUME_KEYS, TUNE_KEYS, TrainConfig, parse_args

CHECK_INDEX = 10**9  # the data stream index of the fixed VAE check batch (never a step)


def lr_factor(i: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine from 1 down to 0.1 at ``total``."""
    if i < warmup:
        return (i + 1) / warmup
    frac = min(1.0, (i - warmup) / max(1, total - warmup))
    return 0.1 + 0.45 * (1 + math.cos(math.pi * frac))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class Trainer:
    def __init__(self, cfg: TrainConfig):
        from diffusers import DDPMScheduler

        self.cfg = cfg
        self.captions = sm.CaptionTokens(
            cfg.empty_prob, cfg.unk_prob, cfg.tags_prob, cfg.wrong_prob
        )
        self.used_ids = self.captions.used_ids
        self.vae, self.unet, self.text = sm.build_components(cfg.seed)
        sm.compact_text_encoder(self.text, self.used_ids)
        self.main_params = [*self.unet.parameters(), *self.text.parameters()]
        self.ema = [p.detach().clone() for p in self.main_params]
        self.opt_vae = torch.optim.AdamW(self.vae.parameters(), lr=cfg.lr_vae, weight_decay=0.01)
        self.opt = torch.optim.AdamW(self.main_params, lr=cfg.lr, weight_decay=0.01)
        self.noise_sched = DDPMScheduler(**sm.noise_schedule())
        ac = self.noise_sched.alphas_cumprod
        self.snr = ac / (1 - ac)
        self.sqrt_one_minus_ac = (1 - ac).sqrt()
        self.last_slope = float("nan")
        self.step, self.seconds, self.scaling = 0, 0.0, None
        self.history: list[tuple[int, str, float]] = []
        self.timing = {"vae": [0.0, 0], "unet": [0.0, 0], "tune": [0.0, 0]}
        self.metrics: dict = {}
        self.threads: ThreadPicker | None = None

    @property
    def total(self) -> int:
        return self.cfg.vae_steps + self.cfg.unet_steps + self.cfg.tune_steps

    def phase_at(self, step: int) -> tuple[str, int, int]:
        """(phase, its first step, its length) for a global step."""
        cfg = self.cfg
        if step < cfg.vae_steps:
            return "vae", 0, cfg.vae_steps
        if step < cfg.vae_steps + cfg.unet_steps:
            return "unet", cfg.vae_steps, cfg.unet_steps
        return "tune", cfg.vae_steps + cfg.unet_steps, cfg.tune_steps

    # ------------------------------------------------------------------ checkpoints
    def ckpt_dir(self) -> Path:
        return Path(self.cfg.work) / "checkpoints"

    def save(self) -> Path:
        d = self.ckpt_dir()
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"step-{self.step:07d}.pt"
        state = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(self.cfg).items()},
            "step": self.step,
            "seconds": self.seconds,
            "scaling": self.scaling,
            "vae": self.vae.state_dict(),
            "unet": self.unet.state_dict(),
            "text": self.text.state_dict(),
            "ema": self.ema,
            "opt_vae": self.opt_vae.state_dict(),
            "opt": self.opt.state_dict(),
            "history": self.history,
            "timing": self.timing,
            "metrics": self.metrics,
            "thread_steps": self.threads.used if self.threads else {},
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a crash mid-write never leaves a broken "latest" checkpoint
        for old in sorted(d.glob("step-*.pt"))[: -self.cfg.keep]:
            old.unlink()
        return path

    def resume(self) -> Path | None:
        found = sorted(self.ckpt_dir().glob("step-*.pt"))
        if not found or self.cfg.fresh:
            return None
        state = torch.load(found[-1], weights_only=True)
        saved = state["config"]
        keys = RESUME_KEYS + (TUNE_KEYS if self.phase_at(state["step"] - 1)[0] == "tune" else ())
        diff = [k for k in keys if saved.get(k) != getattr(self.cfg, k)]
        if diff:
            detail = ", ".join(f"{k}: {saved.get(k)} -> {getattr(self.cfg, k)}" for k in diff)
            raise SystemExit(
                f"error: {found[-1]} was trained with other settings ({detail}); "
                "pass --fresh to start over or use another --work folder"
            )
        self.vae.load_state_dict(state["vae"])
        self.unet.load_state_dict(state["unet"])
        self.text.load_state_dict(state["text"])
        for e, s in zip(self.ema, state["ema"], strict=True):
            e.copy_(s)
        self.opt_vae.load_state_dict(state["opt_vae"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.seconds, self.scaling = state["step"], state["seconds"], state["scaling"]
        self.history = [tuple(h) for h in state["history"]]
        self.timing, self.metrics = {**self.timing, **state["timing"]}, state["metrics"]
        if self.threads:  # steps per thread count, over all resumes (for the model card)
            self.threads.used = dict(state.get("thread_steps", {}))
        return found[-1]

    # ------------------------------------------------------------------ steps
    def vae_step(self, x: torch.Tensor, g: torch.Generator) -> float:
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample(generator=g)).sample
        loss = (rec - x).abs().mean() + 1e-6 * post.kl().mean()
        self.opt_vae.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.vae.parameters(), 1.0)
        self.opt_vae.step()
        return float(loss.detach())

    def unet_step(self, x, ids, g: torch.Generator, i: int, slope_weight: float = 0.0) -> float:
        with torch.no_grad():
            latents = self.vae.encode(x).latent_dist.sample(generator=g) * self.scaling
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, len(self.snr), (x.shape[0],), generator=g)
        noisy = self.noise_sched.add_noise(latents, noise, t)
        pred = self.unet(noisy, t, self.text(ids)[0]).sample
        per_image = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        if self.cfg.min_snr > 0:  # down-weight nearly clean timesteps (Hang et al. 2023)
            snr = self.snr[t]
            per_image = per_image * torch.clamp(snr, max=self.cfg.min_snr) / snr
        loss = per_image.mean()
        if slope_weight > 0:
            slope = guidance_slope(
                self.unet, self.text, noisy, latents, t, ids, self.captions.empty_ids,
                self.sqrt_one_minus_ac, g, self.cfg.slope_batch,
            )  # fmt: skip
            self.last_slope = float(slope.detach().mean())
            excess = torch.relu(slope - self.cfg.slope_limit)
            loss = loss + slope_weight * (excess**2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.main_params, 1.0)
        self.opt.step()
        decay = min(self.cfg.ema_decay, (1 + i) / (10 + i))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.main_params], 1 - decay)
        return float(loss.detach())

    def freeze_vae(self) -> None:
        self.vae.requires_grad_(False)
        self.vae.eval()

    def finish_vae(self) -> None:
        """Freeze the VAE; fix the scaling factor; measure the round trip (PSNR, judge)."""
        self.freeze_vae()
        images, scenes = world.batch(self.cfg.seed, CHECK_INDEX, 256, sm.IMAGE_SIZE, "all")
        x = to_tensor(images)
        with torch.no_grad():
            dist = self.vae.encode(x).latent_dist
            self.scaling = float(1.0 / dist.sample(generator=self.gen(CHECK_INDEX)).std())
            rec = self.vae.decode(dist.mode()).sample.clamp(-1, 1)
        mse = float(((rec - x) / 2).pow(2).mean())
        pixels = ((rec + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
        acc = accuracy([judge(p) for p in pixels], scenes)
        self.metrics["vae_psnr"] = 10 * math.log10(1 / mse)
        self.metrics["vae_judge"] = acc
        print(
            f"VAE: PSNR {self.metrics['vae_psnr']:.1f} dB on 256 images; judge on the round "
            f"trip: {fmt_acc(acc)}; latent scaling factor {self.scaling:.4f}",
            file=sys.stderr,
        )

    def gen(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step + 7)

    # ------------------------------------------------------------------ loop
    def run(self) -> Path:
        from tqdm import tqdm

        cfg = self.cfg
        threads = self.threads = ThreadPicker(cfg.threads)
        resumed = self.resume()
        if resumed:
            print(f"resuming from {resumed} (step {self.step} of {self.total})", file=sys.stderr)
        if self.step >= cfg.vae_steps:
            self.freeze_vae() if self.scaling is not None else self.finish_vae()
        budget = cfg.minutes * 60
        bar = tqdm(
            total=self.total,
            initial=self.step,
            disable=not cfg.progress,
            unit="step",
            dynamic_ncols=True,
        )
        stopped = None
        try:
            while self.step < self.total:
                if self.seconds >= budget:
                    stopped = f"stopped by --minutes {cfg.minutes:g} at step {self.step}"
                    break
                phase = self.phase_at(self.step)[0]
                n_threads = threads.pick(self.step)
                t0 = time.perf_counter()
                loss = self.one_step(phase)
                dt = time.perf_counter() - t0
                threads.record(n_threads, dt, phase)
                self.seconds += dt
                self.timing[phase][0] += dt
                self.timing[phase][1] += 1
                self.history.append((self.step, phase, loss))
                self.step += 1
                if self.step == cfg.vae_steps:
                    self.finish_vae()
                if self.step % cfg.ckpt_every == 0 or self.step == self.total:
                    self.save()
                bar.update(1)
                bar.set_postfix(phase=phase, loss=f"{loss:.4f}", s_step=f"{dt:.2f}", thr=n_threads)
                if phase == "tune" and self.step % 250 == 0:
                    msg = f"step {self.step}: loss {loss:.4f}, guidance slope {self.last_slope:.3f}"
                    bar.write(msg, file=sys.stderr)
        except KeyboardInterrupt:
            bar.close()
            print(f"\ninterrupted; checkpoint {self.save()}", file=sys.stderr)
            raise
        bar.close()
        if stopped:
            self.save()
            print(stopped, file=sys.stderr)
        self.threads_used = threads.summary()
        return self.export(stopped)

    def one_step(self, phase: str) -> float:
        images, scenes = world.batch(self.cfg.seed, self.step, self.cfg.batch, sm.IMAGE_SIZE)
        g = self.gen(self.step)
        if phase == "vae":
            for group in self.opt_vae.param_groups:
                group["lr"] = self.cfg.lr_vae * lr_factor(
                    self.step, self.cfg.vae_steps, self.cfg.warmup
                )
            return self.vae_step(to_tensor(images), g)
        _, start, length = self.phase_at(self.step)
        i = self.step - start
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * lr_factor(i, length, self.cfg.warmup)
        rng = np.random.default_rng([self.cfg.seed, self.step, 1])
        weight = self.cfg.slope_weight if phase == "tune" else 0.0
        return self.unet_step(to_tensor(images), self.captions(scenes, rng), g, i, weight)

    def export(self, stopped: str | None) -> Path:
        if self.scaling is None:  # stopped inside the VAE phase
            self.finish_vae()
        cfg = self.cfg
        n_unet = sum(1 for _ in self.unet.parameters())
        ema_unet, ema_text = self.ema[:n_unet], self.ema[n_unet:]
        unet = type(self.unet).from_config(self.unet.config)
        unet.load_state_dict(ema_state(self.unet, ema_unet))
        text = sm.full_text_encoder(self.text, self.used_ids, ema_state(self.text, ema_text))
        self.vae.register_to_config(scaling_factor=self.scaling)
        work = Path(cfg.work)
        work.mkdir(parents=True, exist_ok=True)
        loss_png = plot_losses(self.history, work / "loss.png", f"{sm.MODEL_NAME} training loss")

        def last(phase: str) -> str:
            v = [h[2] for h in self.history if h[1] == phase][-100:]
            return f"{np.mean(v):.4f}" if v else "-"

        acc = self.metrics.get("vae_judge", {})
        status = (
            f"Trained {self.step} of {self.total} steps"
            + (f" ({stopped})." if stopped else ".")
            + f" VAE round trip on 256 generator images: PSNR "
            f"{self.metrics.get('vae_psnr', float('nan')):.1f} dB; judge on the "
            f"reconstructions: {fmt_acc(acc)}. Seconds per step: {self.speeds()}."
        )
        card = dict(
            cfg=vars(cfg),
            command=cfg.command(),
            status=status,
            used=len(self.used_ids),
            min_snr=f" (min-SNR-{cfg.min_snr:g})" if cfg.min_snr else "",
            threads=self.threads_used,
            minutes=self.seconds / 60,
            vae_loss=last("vae"),
            unet_loss=last("unet"),
            tune_loss=last("tune"),
            loss_png=str(loss_png),
        )
        out = sm.export(Path(cfg.out), self.vae, unet, text, card)
        print(f"wrote {out} ({status})", file=sys.stderr)
        return out

    def speeds(self) -> str:
        return ", ".join(f"{k} {s / n:.3f}" for k, (s, n) in self.timing.items() if n)


def ema_state(model: torch.nn.Module, ema: list[torch.Tensor]) -> dict:
    """``model``'s state dict with its parameters replaced by their EMA (buffers kept)."""
    names = [n for n, _ in model.named_parameters()]
    return {**model.state_dict(), **dict(zip(names, ema, strict=True))}


def fmt_acc(acc: dict) -> str:
    keys = ("colour", "shape", "background", "all")
    return ", ".join(f"{k} {acc[k]:.0%}" for k in keys if k in acc) or "-"


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        Trainer(parse_args(argv, __doc__.splitlines()[0])).run()
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()

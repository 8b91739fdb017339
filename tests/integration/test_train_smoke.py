"""The shapes-model trainer end to end on tiny settings (a few seconds on one CPU thread):
both phases, checkpoints, an interrupted run that resumes to the very same weights, and an
output folder that diffusers and sdbatch's evaluator load and render."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sdbatch.shapes import evaluate as eval_tiny  # noqa: E402
from sdbatch.shapes import model as shapes_model  # noqa: E402
from sdbatch.shapes.train import TrainConfig, Trainer, lr_factor  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    """The trainer sets torch's thread count; other tests keep theirs."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny(root, **overrides) -> TrainConfig:
    cfg = dict(
        out=root / "model",
        work=root / "work",
        batch=4,
        vae_steps=3,
        unet_steps=4,
        tune_steps=2,
        slope_batch=2,
        warmup=2,
        ckpt_every=2,
        threads="1",
        progress=False,
    )
    cfg.update(overrides)
    return TrainConfig(**cfg)


def test_train_interrupt_resume_export_and_render(tmp_path):
    straight = Trainer(tiny(tmp_path / "a"))
    out = straight.run()

    first = Trainer(tiny(tmp_path / "b"))
    real_step = first.one_step

    def interrupted(phase):
        if first.step == 5:
            raise KeyboardInterrupt
        return real_step(phase)

    first.one_step = interrupted
    with pytest.raises(KeyboardInterrupt):
        first.run()
    ckpts = sorted((tmp_path / "b" / "work" / "checkpoints").glob("step-*.pt"))
    assert [p.name for p in ckpts] == ["step-0000004.pt", "step-0000005.pt"]  # keep=2

    resumed = Trainer(tiny(tmp_path / "b"))
    resumed.run()
    assert resumed.step == straight.step == 9
    assert [h[1] for h in straight.history] == ["vae"] * 3 + ["unet"] * 4 + ["tune"] * 2
    assert resumed.history == straight.history  # same data, noise and schedule per step
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema, straight.ema, strict=True))
    assert resumed.scaling == straight.scaling
    assert resumed.threads.used == straight.threads.used == {1: 9}  # counted over the resume

    # The folder is a plain SD 1.x diffusers folder with the full CLIP vocabulary.
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True, safety_checker=None)
    assert pipe.text_encoder.get_input_embeddings().weight.shape == (49408, 64)
    assert pipe.vae_scale_factor == 4
    assert pipe.vae.config.scaling_factor == pytest.approx(straight.scaling)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a red circle on a white background",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "python -m sdbatch.shapes.train" in card and "--vae-steps 3" in card
    assert (out / "training_loss.png").is_file()
    assert json.loads((out / "model_index.json").read_text())["_name_or_path"] == "sdbatch-shapes"

    # The evaluator renders through sdbatch's Renderer and writes its report.
    report = tmp_path / "eval" / "report.md"
    eval_tiny.main(
        [
            "--model",
            str(out),
            "--out",
            str(report),
            "--limit",
            "2",
            "--seeds",
            "1",
            "--samplers",
            "DPM++ 2M Karras",
            "--cfg",
            "7",
            "1",
            "--threads",
            "1",
            "--steps",
            "2",
            "--emphasis-seeds",
            "1",
        ]
    )
    data = json.loads(report.with_suffix(".json").read_text())
    assert [e["weights"] for e in data["emphasis"]] == [list(w) for w in eval_tiny.EMPHASIS_WEIGHTS]
    assert all(e["images"] == 6 and e["first"] + e["second"] <= 6 for e in data["emphasis"])
    assert "## Emphasis" in report.read_text()
    assert [(r["sampler"], r["cfg"], r["images"]) for r in data["results"]] == [
        ("DPM++ 2M Karras", 7.0, 2),
        ("DPM++ 2M Karras", 1.0, 2),
    ]
    assert "## Targets" in report.read_text() and report.with_suffix(".png").is_file()


def test_resume_refuses_other_settings(tmp_path):
    Trainer(tiny(tmp_path, vae_steps=2, unet_steps=0, tune_steps=0)).run()
    with pytest.raises(SystemExit, match="seed: 0 -> 1"):
        Trainer(tiny(tmp_path, vae_steps=2, unet_steps=0, tune_steps=0, seed=1)).run()


def test_tune_settings_are_checked_once_the_tune_phase_began(tmp_path):
    """A finished 2-phase run may be extended by a tune phase with any penalty; a run whose
    tune phase began may not change it (the steps it took would not be reproducible)."""
    before = Trainer(tiny(tmp_path, vae_steps=2, unet_steps=1, tune_steps=0))
    before.run()
    extended = Trainer(tiny(tmp_path, vae_steps=2, unet_steps=1, tune_steps=1, slope_weight=0.5))
    extended.run()
    assert extended.step == 4 and [h[1] for h in extended.history][-1] == "tune"
    assert np.isfinite(extended.last_slope) and extended.last_slope >= 0
    with pytest.raises(SystemExit, match="slope_weight: 0.5 -> 0.1"):
        Trainer(tiny(tmp_path, vae_steps=2, unet_steps=1, tune_steps=2, slope_weight=0.1)).run()


def test_compact_table_matches_the_exported_full_table():
    tok = shapes_model.load_tokenizer()
    used = shapes_model.used_token_ids(tok, ["a", "red", "circle"])
    _, _, text = shapes_model.build_components(0)
    compact = shapes_model.compact_text_encoder(text, used)
    with torch.no_grad():
        compact.weight.normal_()
    full = shapes_model.full_text_encoder(text, used)
    ids = torch.tensor([[49406, 320, 736, 7117, 1234, 49407] + [49407] * 71])
    with torch.no_grad():
        assert torch.allclose(text(ids)[0], full(ids)[0], atol=1e-6)
    table = full.get_input_embeddings().weight
    assert torch.equal(table[1234], table[5678])  # every unused token: the "unknown" row


def test_lr_schedule():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(0.1)


def test_miscaptions_name_exactly_one_attribute_wrongly_and_never_a_held_out_combination():
    from sdbatch.shapes import world

    rng = np.random.default_rng(0)
    changed = {"colour": 0, "shape": 0, "background": 0}
    for _ in range(600):
        scene = world.sample_scene(rng)
        wrong = shapes_model.miscaption(scene, rng)
        diff = [a for a in changed if getattr(scene, a) != getattr(wrong, a)]
        assert len(diff) == 1, (scene, wrong)
        assert wrong.combo not in world.HELDOUT
        assert (wrong.size, wrong.x, wrong.y) == (scene.size, scene.x, scene.y)
        changed[diff[0]] += 1
    assert min(changed.values()) > 150  # all three attributes get miscaptioned


def test_wrong_prob_sets_the_share_of_miscaptioned_training_captions():
    from sdbatch.shapes import world

    rng = np.random.default_rng(1)
    scenes = [world.sample_scene(rng) for _ in range(400)]
    exact = shapes_model.CaptionTokens(0.0, 0.0, 0.0, wrong_prob=0.0)
    noisy = shapes_model.CaptionTokens(0.0, 0.0, 0.0, wrong_prob=0.25)
    a = exact(scenes, np.random.default_rng(2))
    b = noisy(scenes, np.random.default_rng(2))
    share = float((a != b).any(dim=1).float().mean())
    assert 0.18 < share < 0.32

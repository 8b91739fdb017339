"""``sdbatch-tools preprocess IMAGE --module canny -o OUT.png``: see a ControlNet unit's
condition image as sdbatch hands it to the ControlNet (its module, then with ``--size`` its
resize mode: ``--resize-mode``, default "Crop and Resize"; ``--pixel-perfect`` with ``--size``:
the resolution Pixel Perfect computes from the picture's size and that one)."""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "preprocess", help="write the condition image a ControlNet unit's module makes of a picture"
    )
    p.add_argument("image", help="a picture, as a controlnet unit's image")
    p.add_argument("-o", "--out", required=True, help="output PNG")
    p.add_argument("--module", default="canny", help="none | canny (default canny)")
    p.add_argument("--processor-res", type=float, help="canny: 64..2048 (default 512)")
    p.add_argument("--threshold-a", type=float, help="canny: low threshold 1..255 (default 100)")
    p.add_argument("--threshold-b", type=float, help="canny: high threshold 1..255 (default 200)")
    p.add_argument(
        "--size",
        metavar="WxH",
        help="also fit it to a job's size by --resize-mode, as a run does (default: the "
        "module's output, the short side processor_res long)",
    )
    p.add_argument(
        "--pixel-perfect",
        action="store_true",
        help="with --size: the resolution from the picture's size and --size (and the resize "
        "mode), as a unit's pixel_perfect: true; --processor-res is then not used",
    )
    p.add_argument(
        "--resize-mode",
        help="with --size: Just Resize | Crop and Resize | Resize and Fill (default Crop and "
        "Resize), as a unit's resize_mode",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from sdbatch.errors import RecipeError
    from sdbatch.plan.controlnet import module_settings, pixel_perfect
    from sdbatch.plan.controlnet_resize import resize_condition, resize_mode
    from sdbatch.plan.image_inputs import check_image
    from sdbatch.plan.image_ops import flatten
    from sdbatch.plan.preprocessors import preprocess_image, unit_settings

    unit = {
        "module": args.module, "processor_res": args.processor_res,
        "threshold_a": args.threshold_a, "threshold_b": args.threshold_b,
        "pixel_perfect": args.pixel_perfect,
    }  # fmt: skip
    try:
        module, settings = module_settings(unit, "")
        perfect = pixel_perfect(unit, "", module)
    except RecipeError as exc:  # ".threshold_a" -> "--threshold-a", as typed
        flag = "--" + exc.field.lstrip(".").replace("_", "-")
        raise RecipeError(flag, exc.value, exc.allowed) from None
    mode = resize_mode(args.resize_mode, "--resize-mode")
    if args.resize_mode is not None and not args.size:
        raise RecipeError("--resize-mode", args.resize_mode, "given with --size WxH")
    if perfect and not args.size:
        raise RecipeError("--pixel-perfect", True, "given with --size WxH (the job's size)")
    size = None
    if args.size:
        w, _, h = args.size.lower().partition("x")
        if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise RecipeError("--size", args.size, "WIDTHxHEIGHT, e.g. 512x512")
        size = (int(w), int(h))
    check_image("image", args.image)
    with Image.open(args.image) as im:
        picture = flatten(im)
    if size is not None:
        settings = unit_settings(settings, perfect, picture.size, size, mode)
    out = preprocess_image(module, picture, settings)
    if size is not None:
        out = resize_condition(mode, out, *size)
    out.save(args.out)
    names = ("processor_res", "threshold_a", "threshold_b")
    said = [f"module {module}", *(f"{k} {v}" for k, v in zip(names, settings, strict=False))]
    said += ["pixel perfect"] if perfect else []
    said += [mode] if args.size else []
    print(f"{args.out} ({out.width}x{out.height}, {', '.join(said)})")
    return 0

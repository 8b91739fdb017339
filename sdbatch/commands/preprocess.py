"""``sdbatch-tools preprocess IMAGE --module canny -o OUT.png``: see a ControlNet unit's
condition image as sdbatch hands it to the ControlNet (its module, then "Crop and Resize")."""

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
        help="also cut it to a job's size by Crop and Resize, as a run does (default: the "
        "module's output, the short side processor_res long)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    from sdbatch.errors import RecipeError
    from sdbatch.plan.controlnet import RESIZE_MODE, module_settings
    from sdbatch.plan.image_inputs import check_image
    from sdbatch.plan.image_ops import flatten, resize_image
    from sdbatch.plan.preprocessors import preprocess_image

    unit = {
        "module": args.module, "processor_res": args.processor_res,
        "threshold_a": args.threshold_a, "threshold_b": args.threshold_b,
    }  # fmt: skip
    try:
        module, settings = module_settings(unit, "")
    except RecipeError as exc:  # ".threshold_a" -> "--threshold-a", as typed
        flag = "--" + exc.field.lstrip(".").replace("_", "-")
        raise RecipeError(flag, exc.value, exc.allowed) from None
    check_image("image", args.image)
    with Image.open(args.image) as im:
        out = preprocess_image(module, flatten(im), settings)
    if args.size:
        w, _, h = args.size.lower().partition("x")
        if not (w.isdigit() and h.isdigit() and int(w) > 0 and int(h) > 0):
            raise RecipeError("--size", args.size, "WIDTHxHEIGHT, e.g. 512x512")
        out = resize_image(RESIZE_MODE, out, int(w), int(h))
    out.save(args.out)
    names = ("processor_res", "threshold_a", "threshold_b")
    said = ", ".join(f"{k} {v}" for k, v in zip(names, settings, strict=False))
    print(f"{args.out} ({out.width}x{out.height}, module {module}{', ' if said else ''}{said})")
    return 0

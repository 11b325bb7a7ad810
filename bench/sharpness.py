"""Do featup's upsamplers sharpen real photos' features where the photo has edges, and keep their meaning?

For each photo at 224 px and each EfficientNet-Lite0 tap, the low-res features are upsampled by bilinear,
bicubic, the classical joint bilateral filter (``bilateral``, untrained) and the shipped JBU (and, with
--implicit, implicit fits to the first --implicit-photos photos), then scored
(featup.eval.sharpness):

- edge concentration: the share of the features' gradient energy on the photo's Canny edges over the
  share of edge pixels (1 = blind to edges; higher = the features change where the photo does);
- kept meaning: cosine between the upsampled features average-pooled back onto the backbone's grid and
  the backbone's own features (1 = nothing changed at the scale the backbone saw);
- edge alignment (featup.eval.edge_alignment), the older correlation measure, for comparison.

``--photos held-out`` scores Debian's opencv-doc sample photos, which featup never trains or tunes on
(``apt-get install opencv-doc``); ``--photos packaged`` the photos of featup.photos (training material).

    python bench/sharpness.py --photos held-out
    python bench/sharpness.py --taps stride16 --implicit --implicit-photos 6
    python bench/sharpness.py --photos packaged --taps stride32 --jbu stride32=run.pt --back-projection 0 0.5 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

from featup.backbones import load_backbone
from featup.data.images import decode_rgb
from featup.eval import edge_alignment
from featup.eval.features import image_tensor
from featup.eval.sharpness import edge_concentration, image_edges, pooled_cosine
from featup.photos import sample_photos
from featup.training import fit_implicit_batch
from featup.upsamplers import create_upsampler, load_upsampler

OPENCV_DATA = "/usr/share/doc/opencv-doc/examples/data"
# The colour photographs among opencv-doc's samples (no charts, logos, text or calibration boards).
HELD_OUT = ("HappyFish.jpg", "aero3.jpg", "aloeL.jpg", "apple.jpg", "baboon.jpg", "basketball1.png",
            "building.jpg", "butterfly.jpg", "fruits.jpg", "home.jpg", "leuvenA.jpg", "messi5.jpg", "orange.jpg",
            "rubberwhale1.png", "smarties.png", "squirrel_cls.jpg", "starry_night.jpg", "graf1.png")


def load_photos(which: str) -> dict[str, object]:
    """The photos to score, by name: ``held-out`` (opencv-doc) or ``packaged`` (featup.photos)."""
    if which == "packaged":
        return sample_photos()
    missing = [name for name in HELD_OUT if not os.path.exists(os.path.join(OPENCV_DATA, name))]
    if missing:
        raise SystemExit(f"held-out photos missing from {OPENCV_DATA} ({', '.join(missing[:3])}...): "
                         "apt-get install opencv-doc")
    return {os.path.splitext(name)[0]: decode_rgb(os.path.join(OPENCV_DATA, name))[0] for name in HELD_OUT}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", choices=["held-out", "packaged"], default="held-out")
    parser.add_argument("--taps", nargs="+", default=["stride16", "stride32"])
    parser.add_argument("--size", type=int, default=224, help="image side in px")
    parser.add_argument("--jbu", nargs="*", default=[], metavar="TAP=CHECKPOINT",
                        help="score these JBU checkpoints instead of the shipped ones")
    parser.add_argument("--back-projection", type=float, nargs="*", default=[], metavar="ALPHA",
                        help="also score each tap's JBU with these back-projection steps (0..1) instead of the "
                             "one its checkpoint records")
    parser.add_argument("--implicit", action="store_true", help="also score implicit fits (the default recipe)")
    parser.add_argument("--implicit-steps", type=int, nargs="*", default=[], help="more implicit fit budgets to score")
    parser.add_argument("--implicit-photos", type=int, default=2, help="photos the implicit fits are scored on")
    parser.add_argument("--implicit-options", type=json.loads, default={},
                        help='JSON of recipe fields to override in every implicit fit, e.g. \'{"guide_iterations": 0}\'')
    args = parser.parse_args()
    photos = load_photos(args.photos)
    images = torch.cat([image_tensor(photo, args.size) for photo in photos.values()])
    edges = image_edges(images)
    checkpoints = dict(item.split("=", 1) for item in args.jbu)
    print(f"{len(photos)} {args.photos} photos at {args.size} px; {platform.machine()}, torch {torch.__version__}\n")
    for tap in args.taps:
        backbone = load_backbone("efficientnet_lite0", tap=tap)
        jbu = load_upsampler("jbu", backbone=backbone.id, checkpoint=checkpoints.get(tap))
        with torch.no_grad():
            low = backbone(backbone.normalize(images))
        upsamplers = {
            "bilinear": create_upsampler("bilinear"),
            "bicubic": lambda f, image: F.interpolate(f, size=image.shape[-2:], mode="bicubic", align_corners=False),
            "bilateral (classical)": create_upsampler("bilateral"),
            "jbu": jbu,
        }
        for alpha in args.back_projection:
            upsamplers[f"jbu, back-projection {alpha:g}"] = load_upsampler(
                "jbu", backbone=backbone.id, checkpoint=checkpoints.get(tap), back_projection=alpha)
        score(backbone, upsamplers, low, images, edges)
        print()
        budgets = ([None] if args.implicit else []) + args.implicit_steps
        if budgets:
            k = args.implicit_photos
            subset = dict(upsamplers)
            for steps in budgets:
                start = time.perf_counter()
                # One batched fit of the k photos: photo i gets fit_implicit(photo, seed=i).
                options = args.implicit_options | ({} if steps is None else {"steps": steps})
                fits = fit_implicit_batch(images[:k], backbone, progress=False, **options)
                name = "implicit (default recipe)" if steps is None else f"implicit, {steps} steps"
                subset[name] = lambda f, image, fits=fits: fits[_index(images, image)](f, image)
                print(f"({name}: {(time.perf_counter() - start) / k:.0f} s per photo, fitted as one batch)")
            print(f"\nOn the first {k} photos:\n")
            score(backbone, subset, low[:k], images[:k], edges[:k])


def _index(images: torch.Tensor, image: torch.Tensor) -> int:
    return next(i for i in range(len(images)) if torch.equal(images[i], image[0]))


def score(backbone, upsamplers: dict, low: torch.Tensor, images: torch.Tensor, edges: torch.Tensor) -> None:
    """Print each upsampler's edge concentration (and its ratio to bilinear's), pooled cosine and edge alignment.

    One image at a time: 18 photos of 1280 channels at 224² are 4.6 GB per upsampler.
    """
    print("| backbone | upsampler | edge concentration ↑ | × bilinear | pooled cosine ↑ | edge alignment ↑ |")
    print("|---|---|---:|---:|---:|---:|")
    base = None
    for name, upsampler in upsamplers.items():
        scores = []
        for i in range(len(low)):
            with torch.no_grad():
                high = upsampler(low[i:i + 1], images[i:i + 1])
            scores.append((edge_concentration(high, edges[i:i + 1]).item(), pooled_cosine(high, low[i:i + 1]).item(),
                           edge_alignment(high, images[i:i + 1])))
        concentration, cosine, alignment = (torch.tensor(column).nanmean().item() for column in zip(*scores))
        base = base or concentration
        print(f"| {backbone.id} ({backbone.dim} ch) | {name} | {concentration:.2f} | {concentration / base:.2f} | "
              f"{cosine:.3f} | {alignment:.3f} |", flush=True)


if __name__ == "__main__":
    main()

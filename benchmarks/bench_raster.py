"""Speed and parity of the PyTorch rasterizer (clipasso_engine.raster) against diffvg's reference.

    .venv/bin/python benchmarks/bench_raster.py [--repeats 20] [--threads 2] [--device cpu]

Prints forward and forward+backward medians (ms) for CLIPasso's start strokes ("short": a start
point and a 3-step random walk of +-5.6 px) and long strokes spanning the canvas ("wide"), 1 and 3
sketches, 16 and 64 strokes, then the parity numbers against diffvg (tests/data/README.md).
The 1 x 16 rows use the reference's own strokes; the others are drawn the same way.
Run it alone: another busy process on a 2-core machine makes every number meaningless.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clipasso_engine.raster import render_strokes  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "data" / "diffvg_reference.npz"   # tests/data/README.md
DIFFVG_MS = {("short", "fwd"): 48, ("short", "fwd+bwd"): 264, ("wide", "fwd"): 250, ("wide", "fwd+bwd"): 1060}


def make_strokes(kind, batch, num, seed, reference):
    if batch == 1 and num == 16:
        return torch.tensor(reference["points" if kind == "short" else "wide_points"])[None]
    g = torch.Generator().manual_seed(seed)
    if kind == "wide":
        return (torch.rand(batch, num, 4, 2, generator=g) * 0.9 + 0.05) * 224
    start = torch.rand(batch, num, 1, 2, generator=g) * 224
    steps = (torch.rand(batch, num, 3, 2, generator=g) * 2 - 1) * 0.025 * 224
    return torch.cat([start, start + steps.cumsum(2)], dim=2)


def median_ms(fn, repeats, device):
    fn()                                           # warm-up (allocator, lazy init)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    reference = dict(np.load(REFERENCE))

    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(f"{'strokes':8} {'sketches':>8} {'N':>4} {'fwd ms':>8} {'fwd+bwd ms':>11}")
    for kind in ("short", "wide"):
        for batch in (1, 3):
            for num in (16, 64):
                points = make_strokes(kind, batch, num, seed=batch * 100 + num, reference=reference).to(device)

                def forward():
                    with torch.no_grad():
                        render_strokes(points)

                def forward_backward():
                    p = points.clone().requires_grad_(True)
                    image = render_strokes(p)
                    ((image[:, 0] - 0.5) ** 2).sum().backward()

                fwd = median_ms(forward, args.repeats, device)
                both = median_ms(forward_backward, args.repeats, device)
                print(f"{kind:8} {batch:>8} {num:>4} {fwd:>8.1f} {both:>11.1f}")
    print("diffvg on this CPU (1 x 16, 2x2 spp): " + ", ".join(f"{k[0]} {k[1]} {v} ms" for k, v in DIFFVG_MS.items()))

    print()
    print(f"{'parity (1 x 16)':16} {'|img-img_hq|':>13} {'|img-img|':>10} {'cos grad_hq':>12} {'cos grad':>9}"
          f" {'cos seed mean':>14}")
    for kind, prefix in (("short", ""), ("wide", "wide_")):
        points = torch.tensor(reference[prefix + "points"])[None].to(device).requires_grad_(True)
        image = render_strokes(points)[0, 0]
        ((image - 0.5) ** 2).sum().backward()
        image, grad = image.detach().cpu().numpy(), points.grad[0].cpu().numpy()
        print(f"{'torch ' + kind:16} {np.abs(image - reference[prefix + 'img_hq']).mean():>13.5f}"
              f" {np.abs(image - reference[prefix + 'img']).mean():>10.5f}"
              f" {cosine(grad, reference[prefix + 'grad_hq']):>12.4f}"
              f" {cosine(grad, reference[prefix + 'grad']):>9.4f}"
              f" {cosine(grad, reference[prefix + 'grad_seed_mean']):>14.4f}")
        print(f"{'diffvg 2x2 ' + kind:16} {np.abs(reference[prefix + 'img'] - reference[prefix + 'img_hq']).mean():>13.5f}"
              f" {0:>10.5f} {cosine(reference[prefix + 'grad'], reference[prefix + 'grad_hq']):>12.4f}"
              f" {1:>9.4f} {cosine(reference[prefix + 'grad'], reference[prefix + 'grad_seed_mean']):>14.4f}")


if __name__ == "__main__":
    main()

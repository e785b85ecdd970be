"""Per-iteration time, phase split and peak memory of the optimisation loop, against the reference's loop.

    .venv/bin/python benchmarks/bench_iteration.py [--repeats 7] [--threads 2]

Each configuration runs in its own process (clean peak RSS), on random-weight CLIP RN101 (same
architecture and FLOPs as the real weights), 16 strokes at 224, 1 clean + num_augs augmented views.
"reference loop" re-creates what the released CLIPasso does per iteration: CLIP weights require grad
(so backward computes all weight gradients), the target branch is recomputed every iteration with a
graph, seeds run one after another. Our rasterizer stands in for diffvg in both (diffvg is not
installable here; it costs ~10 % of the reference's iteration). Ratios are what to read: they are
measured in one run on the same machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

CASES = {   # chunk: images per CLIP forward+backward (the engine's CPU default is 4; 0 = all at once)
    "reference loop, 1 seed": dict(mode="reference", seeds=1, augs=4),
    "ours, fresh views (paper), 1 seed": dict(mode="ours", seeds=1, augs=4),
    "ours, pool of 32 views (balanced), 1 seed": dict(mode="ours", seeds=1, augs=4, pool=32),
    "ours, pool, 1 seed, all 5 views at once": dict(mode="ours", seeds=1, augs=4, pool=32, chunk=0),
    "ours, pool, 3 seeds (a view at a time)": dict(mode="ours", seeds=3, augs=4, pool=32),
    "ours, pool, 3 seeds, all 15 images at once": dict(mode="ours", seeds=3, augs=4, pool=32, chunk=0),
    "ours, balanced preset (2 augs, pool), 1 seed": dict(mode="ours", seeds=1, augs=2, pool=32),
    "ours, fast preset (1 aug, pool), 1 seed": dict(mode="ours", seeds=1, augs=1, pool=32),
}


def run_case(mode: str, seeds: int, augs: int, repeats: int, threads: int, pool: int = 0, chunk: int = 4) -> dict:
    import torch

    from clipasso_engine import clip, models, raster, sketcher
    from clipasso_engine.config import make_config
    from clipasso_engine.losses import CLIPLoss, augment, clip_normalize, resnet_features

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = make_config(num_augs=augs, num_seeds=seeds, augment_pool=pool, clip_chunk=chunk)
    visual = models.build_clip_visual("RN101").eval()  # the image tower only, as models.load_clip builds it
    target = torch.rand(1, 3, 224, 224)
    g = torch.Generator().manual_seed(0)
    points = (torch.rand(seeds, 16, 4, 2, generator=g) * 224).requires_grad_(True)
    optimizer = torch.optim.Adam([points], lr=1.0)
    generator = torch.Generator().manual_seed(0)

    if mode == "ours":
        visual.requires_grad_(False)
        clip.fold_batchnorm(visual)   # as models.load_clip does for RN101
        visual = visual.to(memory_format=torch.channels_last)
        loss_fn = CLIPLoss(visual, target, config)
    else:
        visual.requires_grad_(True)

    def reference_loss(sketch):
        """One seed as the released code does it: fresh target views with a graph, weights trainable."""
        xs, ys = [sketch], [target]
        for _ in range(augs):
            pair = augment(torch.cat([sketch, target]), config, generator)
            xs.append(pair[:1])
            ys.append(pair[1:])
        s2, s3, se = resnet_features(visual, clip_normalize(torch.cat(xs)))
        t2, t3, te = resnet_features(visual, clip_normalize(torch.cat(ys).detach()))
        fc = (1 - torch.cosine_similarity(se, te, dim=1)).mean()
        return ((s2 - t2) ** 2).mean() + ((s3 - t3) ** 2).mean() + 0.1 * fc

    phases = {"render": [], "loss": [], "total": []}
    for it in range(repeats + 1):
        t0 = time.perf_counter()
        sketches = raster.render_strokes(points, 1.5, 224, "torch")
        t1 = time.perf_counter()
        if mode == "ours":   # the engine's own step (sketcher.optimise_step), not a copy of it
            sketcher.optimise_step([points], sketches, optimizer, loss_fn, None, generator)
        else:  # seeds one after another, each with its own target recomputation
            loss = sum(reference_loss(sketches[s:s + 1]) for s in range(seeds))
            optimizer.zero_grad(set_to_none=True)
            visual.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        t2 = time.perf_counter()
        if it == 0:
            continue  # warm-up
        for name, dt in zip(phases, (t1 - t0, t2 - t1, t2 - t0)):
            phases[name].append(dt)
    result = {name: statistics.median(v) for name, v in phases.items()}
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    result["seeds"] = seeds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(**CASES[args.case], repeats=args.repeats, threads=args.threads)))
        return

    rows = {}
    for name in CASES:
        out = subprocess.run([sys.executable, __file__, "--case", name, "--repeats", str(args.repeats),
                              "--threads", str(args.threads)], capture_output=True, text=True, check=True)
        rows[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"  measured: {name}", file=sys.stderr)

    ref = rows["reference loop, 1 seed"]["total"]
    print(f"\nPer-iteration time, 16 strokes, 224 px, {args.threads} threads, median of {args.repeats} "
          f"(+1 warm-up), random-weight RN101\n")
    print("| case | render | CLIP loss + backward + Adam | total | per seed-iteration | speed-up | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        per_seed = r["total"] / r["seeds"]
        print(f"| {name} | {r['render'] * 1000:.0f} ms | {r['loss']:.2f} s | {r['total']:.2f} s | {per_seed:.2f} s | "
              f"{ref / per_seed:.1f}x | {r['peak_rss_gb']:.2f} GB |")


if __name__ == "__main__":
    main()

"""The GPU check behind device_check.sh; prints one markdown table. See the .sh for how to run it.

Parity is measured on the engine's own pieces (rasterizer + CLIP RN101 image tower, cosine distance to
the target's embedding), same inputs on CPU and GPU: |loss difference| and the relative L2 difference of
d loss / d control points. Timings go through clipasso_engine.batch.draw_items (the batch command's path).
--cpu-smoke: everything on the CPU at tiny sizes (2 iterations, K = 1, 2), to prove the script runs.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parity(config, device, rows):
    """The engine's loss (rasterizer + CLIPLoss, clean view) and its gradient on the CPU in fp32 against
    the device in fp32 and at the engine's precision there (fp16 autocast on CUDA)."""
    import torch
    from clipasso_engine import models, raster
    from clipasso_engine.losses import CLIPLoss
    torch.manual_seed(0)
    points = torch.rand(1, 16, 4, 2) * 224
    target = torch.rand(1, 3, 224, 224)
    results = {}
    for dev, precision in (("cpu", "fp32"), (device, "fp32"), (device, "auto")):
        cfg = config.replace(precision=precision, num_augs=0)
        visual = models.load_clip("RN101", cfg, dev)
        p = points.to(dev).requires_grad_(True)
        loss = CLIPLoss(visual, target.to(dev), cfg)(raster.render_strokes(p, 1.5, 224), torch.Generator())
        loss.sum().backward()
        results[(dev, precision)] = (float(loss.detach().sum()), p.grad.detach().cpu())
        del visual
    l0, g0 = results[("cpu", "fp32")]
    for precision in ("fp32", "auto"):
        l1, g1 = results[(device, precision)]
        name = f"{device} {'fp32' if precision == 'fp32' else 'engine precision (fp16 autocast on CUDA)'}"
        rows.append((f"parity: CPU fp32 vs {name}: loss |diff|", f"{abs(l0 - l1):.2e} (loss {l0:.5f})"))
        rows.append((f"parity: CPU fp32 vs {name}: gradient relative L2 diff",
                     f"{float((g0 - g1).norm() / g0.norm().clamp_min(1e-12)):.2e}"))


def timed_draw(paths, config, levels, runtime):
    from clipasso_engine import batch
    t = time.perf_counter()
    out = batch.draw_items([(p, p.stem) for p in paths], config, levels, runtime, lambda e: None)
    bad = [r for *_, r in out if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"draw failed: {bad[0]['error']}")
    return time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpu-smoke", "--dry", action="store_true", help="tiny sizes on the CPU")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    import torch
    from bench_batch import photos
    from clipasso_engine import batch
    from clipasso_engine.config import make_config
    smoke = args.cpu_smoke
    device = "cpu" if smoke else args.device
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("No CUDA device: run with --cpu-smoke to check the script only.")
    iters = 2 if smoke else 20
    ks = [1, 2] if smoke else [1, 4, 16]
    rows = [("device", torch.cuda.get_device_name(device) if not smoke else "cpu (smoke run, tiny sizes)")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models_dir = os.environ.get("CLIPASSO_MODELS_DIR")
        if not models_dir:
            from fake_weights import make_test_weights
            models_dir = tmp / "models"
            models_dir.mkdir()
            make_test_weights(models_dir, names=("RN101", "ViT-B-32"))
            rows.append(("weights", "stand-in (random, tests/fake_weights.py)"))
        base = make_config("paper", models_dir=str(models_dir), device=device)
        parity(base, "cpu" if smoke else device, rows)
        paths = photos(tmp, max(ks))
        runtime = [batch._prepare(base, lambda e: None)]
        if not smoke:
            torch.cuda.reset_peak_memory_stats()
        for seeds in (1, 3):
            cfg = base.replace(num_iterations=iters, num_seeds=seeds)
            timed_draw(paths[:1], cfg.replace(num_iterations=1), [16], runtime)  # warm-up
            seconds = timed_draw(paths[:1], cfg, [16], runtime)
            rows.append((f"per-iteration, 1 image, {seeds} seed(s), 1+4 views", f"{seconds / iters * 1000:.0f} ms "
                         "(incl. saliency/importance share)"))
        paper = base.replace(num_iterations=4) if smoke else base
        seconds = timed_draw(paths[:1], paper, [16], runtime)
        rows.append((f"paper preset wall time, 1 image ({paper.num_iterations} it x {paper.num_seeds} seeds)",
                     f"{seconds:.1f} s"))
        fast = make_config("fast", models_dir=str(models_dir), device=device, num_iterations=iters)
        for k in ks:
            seconds = timed_draw(paths[:k], fast, [16], runtime)
            rows.append((f"batch throughput K={k} (fast preset, {iters} it)", f"{60 * k / seconds:.1f} sketches/min"))
        if not smoke:
            rows.append(("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"))
    print("| check | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()

"""Batch throughput on this machine: sketches per minute for K = 1, 2, 4 images per optimisation batch.

Stand-in weights (tests/fake_weights.py), few iterations, fast preset, one level (16 strokes): what is
measured is the engine's cost per image-iteration, not sketch quality. Models are loaded once (not timed).
    .venv/bin/python benchmarks/bench_batch.py [--iterations 5] [--ks 1,2,4] [--threads 2]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def photos(folder: Path, n: int) -> list[Path]:
    from PIL import Image
    from skimage import data
    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "cat", "immunohistochemistry", "hubble_deep_field"]
    paths = []
    for i in range(n):
        path = folder / f"{names[i % len(names)]}-{i}.png"
        Image.fromarray(getattr(data, names[i % len(names)])()).save(path)
        paths.append(path)
    return paths


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--ks", default="1,2,4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models-dir", help="real weights folder (default: stand-in weights)")
    args = parser.parse_args()
    import torch
    from clipasso_engine import batch
    from clipasso_engine.config import make_config
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models_dir = args.models_dir
        if models_dir is None:
            from fake_weights import make_test_weights
            models_dir = tmp / "models"
            models_dir.mkdir()
            make_test_weights(models_dir, names=("RN101", "ViT-B-32"))
        config = make_config("fast", num_iterations=args.iterations, models_dir=str(models_dir), device=args.device)
        paths = photos(tmp, max(ks))
        runtime = [batch._prepare(config, lambda e: None)]
        device = batch._runtime_device(runtime[0])
        rows = []
        for k in ks:
            items = [(p, p.stem) for p in paths[:k]]
            t = time.perf_counter()
            batch.draw_items(items, config, [16], runtime, lambda e: None)
            seconds = time.perf_counter() - t
            rows.append((k, seconds, seconds / (k * args.iterations), 60 * k / seconds))
    print(f"device {device}, {args.threads} threads, fast preset (1 seed, 1 clean + {config.num_augs} views), "
          f"16 strokes, {args.iterations} iterations, stand-in weights; time includes saliency and importance")
    print("| K (images per batch) | wall s | s per image-iteration | sketches per minute at these iterations |")
    print("|---|---|---|---|")
    for k, seconds, per, spm in rows:
        print(f"| {k} | {seconds:.1f} | {per:.2f} | {spm:.1f} |")


if __name__ == "__main__":
    main()

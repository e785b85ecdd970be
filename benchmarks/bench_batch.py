"""What batching buys on this machine: levels of one image together, and several images together.

    .venv/bin/python benchmarks/bench_batch.py [--iterations 10] [--repeats 3] [--ks 1,2,4] [--threads 2]

Two tables, each measured in one process, median of --repeats after a warm-up, stand-in weights
(tests/fake_weights.py: the real architectures and file formats, so loading and compute cost the same):
  levels  "8,16,32" of one image: one batched sketch_many run against three separate runs (what the
          extension did before: three engine processes, each also loading the models) and against one
          level alone. Wall time includes saliency and the importance ordering; "per iteration" is the
          optimisation loop alone, the part that grows with the preset's iterations.
  images  K = 1, 2, 4 images per batch (clipasso batch --batch-images K): sketches per minute.
Run it alone: a second busy process makes CPU timings 4-19x slower (docs/STACK.md).
"""

import argparse
import os
import statistics
import subprocess
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


def timed(repeats, fn):
    """(median wall seconds, median loop seconds per iteration) over `repeats` calls after one warm-up.
    fn() returns one result list per sketch_many run it made."""
    walls, per_iteration = [], []
    for i in range(repeats + 1):
        t = time.perf_counter()
        runs = fn()
        wall = time.perf_counter() - t
        if i:
            walls.append(wall)
            per_iteration.append(sum(results[0].timings["per_iteration"] for results in runs))
    return statistics.median(walls), statistics.median(per_iteration)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ks", default="1,2,4")
    parser.add_argument("--levels", default="8,16,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models-dir", help="real weights folder (default: stand-in weights)")
    parser.add_argument("--only", choices=["levels", "images"])
    args = parser.parse_args()
    import torch
    from clipasso_engine import sketcher
    from clipasso_engine.config import make_config
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.ks.split(",")]
    levels = [int(n) for n in args.levels.split(",")]
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
        runtime = sketcher.prepare(config)
        # what one more engine process costs before it draws: start Python, import, load the models
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import sys; from clipasso_engine import make_config, prepare; "
                        "prepare(make_config('fast', models_dir=sys.argv[1], device=sys.argv[2]))",
                        str(models_dir), args.device], check=True, cwd=ROOT)
        load_s = time.perf_counter() - t
        print(f"device {runtime.device}, {args.threads} threads, fast preset (1 seed, 1 clean + {config.num_augs} "
              f"views), {args.iterations} iterations, stand-in weights, median of {args.repeats}; "
              f"an engine process's start (Python, imports, models): {load_s:.1f} s\n")

        def run(images, lv):
            return [[r for row in sketcher.sketch_many(images, config, lv, runtime=runtime) for r in row]]

        if args.only in (None, "levels"):
            middle = levels[len(levels) // 2]
            one = timed(args.repeats, lambda: run(paths[:1], [middle]))
            separate = timed(args.repeats, lambda: [run(paths[:1], [n])[0] for n in levels])
            batched = timed(args.repeats, lambda: run(paths[:1], levels))
            rows = [(f"{middle} strokes alone", *one),
                    (f"{','.join(map(str, levels))}: three runs, models loaded once", *separate),
                    (f"{','.join(map(str, levels))}: three engine processes (+ {len(levels)} starts)",
                     separate[0] + len(levels) * load_s, separate[1]),
                    (f"{','.join(map(str, levels))}: one batched run", *batched)]
            print("| levels of one image | wall s | x one level | loop s per iteration | x one level |")
            print("|---|---|---|---|---|")
            for name, wall, per in rows:
                print(f"| {name} | {wall:.1f} | {wall / one[0]:.2f}x | {per:.2f} | {per / one[1]:.2f}x |")
            print()

        if args.only in (None, "images"):
            print("| K images per batch | wall s | loop s per iteration | s per image-iteration | sketches per minute "
                  f"at {args.iterations} iterations | per-image speed-up |")
            print("|---|---|---|---|---|---|")
            base = None
            for k in ks:
                wall, per = timed(args.repeats, lambda: run(paths[:k], [16]))
                per_image = per / k
                base = base or per_image
                print(f"| {k} | {wall:.1f} | {per:.2f} | {per_image:.2f} | {60 * k / wall:.1f} | "
                      f"{base / per_image:.2f}x |")


if __name__ == "__main__":
    main()

"""Wall time of each preset on this machine, and the clean-view loss it reaches.

    .venv/bin/python benchmarks/bench_presets.py [--models-dir DIR] [--image photo.jpg] [--full fast]

Presets named in --full run to the end; the others run `--probe` iterations and their wall time is
extrapolated from the measured per-iteration time (set-up and stroke ordering measured, not guessed).
Without --models-dir it generates random weights of the real architectures (tests/fake_weights.py):
then the times are real but the loss values say nothing about drawing quality.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir")
    parser.add_argument("--image", help="default: scikit-image's chelsea photo")
    parser.add_argument("--full", nargs="*", default=["fast"], help="presets to run to the end")
    parser.add_argument("--probe", type=int, default=20, help="iterations measured for the other presets")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from clipasso_engine import PRESETS, make_config, sketch
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    if args.models_dir is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from fake_weights import make_test_weights
        make_test_weights(work, names=("RN101", "ViT-B-32"))
        args.models_dir = str(work)
    if args.image is None:
        from PIL import Image
        from skimage import data
        args.image = str(work / "chelsea.png")
        Image.fromarray(data.chelsea()).save(args.image)

    loaded = {}
    print(f"\n| preset | what it trades | iterations x seeds x views | wall time | clean-view loss | measured |")
    print("|---|---|---|---|---|---|")
    for name, preset in PRESETS.items():
        config = make_config(name, models_dir=args.models_dir)
        full = name in args.full
        run = config if full else config.replace(num_iterations=args.probe)
        result = sketch(args.image, run, loaded_models=loaded)
        t = result.timings
        fixed = t["total"] - t["optimise"]
        wall = t["total"] if full else fixed + t["per_iteration"] * config.num_iterations
        loss = f"{result.loss:.4g}" if full else f"({result.loss:.4g} after {args.probe})"
        print(f"| {name} | {preset['doc']} | {config.num_iterations} x {config.num_seeds} x {1 + config.num_augs} | "
              f"{wall / 60:.1f} min | {loss} | {'full run' if full else f'{args.probe} iterations, extrapolated'} |")


if __name__ == "__main__":
    main()

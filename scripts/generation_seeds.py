"""fid_digits of fresh SGLD chains against their own starts, over several sampling seeds: the
measurement behind the digits presets' weight average (docs/runs.md).

One FID at 1000 samples moves by about +-1.5 from one set of starts to the next, so a single
number cannot tell a sampler that beats its start from one that does not. For each checkpoint
and each seed, this draws n class-Gaussian starts, runs each chain length on those same starts
and prints the mean over the seeds, beside the starts' own score (0 steps).

    python scripts/generation_seeds.py runs/a/checkpoints/best.pt runs/b/checkpoints/best.pt
    python scripts/generation_seeds.py RUN/checkpoints/last.pt --steps 5 20 100 --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ebjdat.checkpoint import CheckpointError
from ebjdat.data import to_float01
from ebjdat.eval.checkpoints import data_root, load_checkpoint, train_gaussians, train_images
from ebjdat.eval.fresh_samples import SamplerOverrides, sample_with
from ebjdat.eval.generation import digits_features, feature_statistics, frechet_distance


def scores(path: Path, steps: list[int], seeds: list[int], n: int) -> dict[int, list[float]]:
    """steps -> fid_digits per seed (0 steps: the starts themselves)."""
    model, _, cfg = load_checkpoint(path, torch.device("cpu"))
    if cfg.data.dataset != "digits":
        raise CheckpointError(f"checkpoint {path} was trained on {cfg.data.dataset}, not digits")
    root = data_root(cfg, None)
    gaussians = train_gaussians(cfg, root, model.num_classes)
    x_train, _ = train_images(cfg, root)
    mu_r, s_r = feature_statistics(digits_features(to_float01(x_train)))
    out: dict[int, list[float]] = {k: [] for k in steps}
    for seed in seeds:
        for k in steps:
            sampler = SamplerOverrides(steps=k).resolve(cfg)
            x, _ = sample_with(
                model, n, sampler, gaussians=gaussians, shape=None,
                generator=torch.Generator().manual_seed(seed), batch_size=500, progress=False,
            )  # fmt: skip
            mu, sig = feature_statistics(digits_features(x))
            out[k].append(frechet_distance(mu, sig, mu_r, s_r))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoints", nargs="+", type=Path, help="digits training checkpoints")
    parser.add_argument("--steps", nargs="+", type=int, default=[20], help="chain lengths")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="start seeds")
    parser.add_argument("-n", type=int, default=1000, help="samples per chain length and seed")
    args = parser.parse_args(argv)
    if args.n < 2 or min(args.steps) < 0 or min(args.seeds) < 0:
        parser.error("-n must be >= 2, and --steps and --seeds >= 0")
    missing = [str(p) for p in args.checkpoints if not p.is_file()]
    if missing:
        parser.error(f"no such checkpoint: {missing[0]}")
    steps = sorted({0, *args.steps})
    print(f"| checkpoint | {' | '.join(f'{k} steps' for k in steps)} |")
    print(f"|---|{'---|' * len(steps)}")
    for path in args.checkpoints:
        try:
            table = scores(path, steps, args.seeds, args.n)
        except CheckpointError as err:
            print(f"generation_seeds.py: {err}", file=sys.stderr)
            return 2
        cells = [
            f"{sum(v) / len(v):.2f} ({', '.join(f'{x:.1f}' for x in v)})" for v in table.values()
        ]
        print(f"| {path} | {' | '.join(cells)} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

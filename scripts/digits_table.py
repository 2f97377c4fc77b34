"""Trains (unless --no-train) and evaluates the three digits presets — EB-JDAT (`digits`),
JEM (`digits-jem`) and PGD-AT (`digits-pgd-at`) — on the TEST split: clean accuracy, PGD-20 at
eps 0.1 (L-inf, [0, 1] pixels, step 2.5 eps / 20, random start), and a grid of fresh samples
(class-Gaussian starts + 100 SGLD steps with the preset's sampler) per model.

    python scripts/digits_table.py --runs runs/digits-table
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from torchvision.utils import save_image

import ebjdat
from ebjdat.attacks import pgd_attack
from ebjdat.checkpoint import load
from ebjdat.data import load_split_tensors
from ebjdat.models import JEM
from ebjdat.sampling import ClassGaussians, sgld
from ebjdat.train.config import from_dict

PRESETS = ("digits", "digits-jem", "digits-pgd-at")


def evaluate(run: Path, eps: float, out: Path) -> dict[str, float]:
    ckpt = run / "checkpoints" / "best.pt"
    model = ebjdat.load_model(str(ckpt))
    cfg = from_dict(load(ckpt)["config"])
    x, y = load_split_tensors("digits", "test")
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    x_adv = pgd_attack(model, x, y, eps=eps, step_size=2.5 * eps / 20, steps=20,
                       generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    # Fresh samples: 10 per class from the class Gaussians, 100 steps of the preset's SGLD.
    train_x, train_y = load_split_tensors("digits", "train")
    gauss = ClassGaussians().fit(JEM.to_internal(train_x), train_y, 10)
    g = torch.Generator().manual_seed(0)
    z0 = gauss.sample(100, classes=torch.arange(10).repeat_interleave(10), generator=g)
    s = cfg.sgld
    z = sgld(model, z0, steps=100, step_size=s.step_size, noise_std=s.noise_std,
             grad_clip=s.grad_clip, bn_train=False, generator=g)
    save_image(JEM.from_internal(z).clamp(0, 1), out / f"fresh_{run.name}.png", nrow=10,
               padding=1)
    return {"clean_acc": clean, "pgd20_acc": robust, "n_test": len(y)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="runs/digits-table", help="directory of the 3 runs")
    parser.add_argument("--no-train", action="store_true", help="evaluate existing runs only")
    parser.add_argument("--eps", type=float, default=0.1)
    args = parser.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    table = {}
    for preset in PRESETS:
        if not args.no_train:
            subprocess.run([sys.executable, "-m", "ebjdat.cli.train", "--preset", preset,
                            "--out", str(runs / preset), "--overwrite"], check=True)
        table[preset] = evaluate(runs / preset, args.eps, runs)
        print(preset, table[preset], flush=True)
    (runs / "table.json").write_text(json.dumps(table, indent=2))
    print(f"\n| preset | clean | PGD-20 @ eps {args.eps} |\n|---|---|---|")
    for preset, row in table.items():
        print(f"| {preset} | {row['clean_acc']:.3f} | {row['pgd20_acc']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

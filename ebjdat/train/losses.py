"""The EB-JDAT loss, term by term, on energies from the fused energy head:

    L = w_px (E(x+) - E(x_q)) + w_ce CE(x) + w_align (E(x+') - E(x_adv)) + w_ce_adv CE(x_adv)

x+ are the positives, x_q the SGLD samples, x_adv the adversarial samples of the labelled batch
x, and x+' the positives of the alignment term: x itself ("paired") or the positives minibatch
("unpaired", as the official code does).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ebjdat import ops

from .config import LossConfig


@dataclass
class Forward:
    """Logits of each input the loss needs (None where a term is off)."""

    positives: torch.Tensor | None
    samples: torch.Tensor | None
    labelled: torch.Tensor | None
    adversarial: torch.Tensor | None


@dataclass
class LossTerms:
    total: torch.Tensor
    px: torch.Tensor | None
    ce: torch.Tensor | None
    align: torch.Tensor | None
    ce_adv: torch.Tensor | None
    e_pos: torch.Tensor | None  # mean energies, for logs and divergence checks
    e_q: torch.Tensor | None
    e_adv: torch.Tensor | None
    acc: torch.Tensor | None = None  # accuracy on the labelled batch (for logs)
    acc_adv: torch.Tensor | None = None  # ... and on its adversarial samples


def needs(cfg: LossConfig, adv_enabled: bool) -> dict[str, bool]:
    """Which forwards and samplers the weights call for."""
    align = cfg.w_align != 0 and adv_enabled
    ce_adv = cfg.w_ce_adv != 0 and adv_enabled
    return {
        "samples": cfg.w_px != 0,
        "adversarial": align or ce_adv,
        "positives": cfg.w_px != 0 or (align and cfg.align_positives == "unpaired"),
        "labelled": cfg.w_ce != 0 or (align and cfg.align_positives == "paired"),
        "align": align,
        "ce_adv": ce_adv,
    }


def eb_jdat_loss(cfg: LossConfig, fwd: Forward, y: torch.Tensor, adv_enabled: bool) -> LossTerms:
    need = needs(cfg, adv_enabled)
    zero = next(
        t for t in (fwd.labelled, fwd.adversarial, fwd.positives) if t is not None
    ).new_zeros(())
    total = zero
    px = ce = align = ce_adv = e_pos = e_q = e_adv = None
    lab = ops.energy_head(fwd.labelled, y) if fwd.labelled is not None else None
    if fwd.positives is not None:
        e_pos = ops.energy_head(fwd.positives).energy.mean()
    if need["samples"]:
        e_q = ops.energy_head(fwd.samples).energy.mean()
        px = e_pos - e_q
        total = total + cfg.w_px * px
    if cfg.w_ce != 0:
        ce = lab.ce.mean()
        total = total + cfg.w_ce * ce
    if need["adversarial"]:
        adv = ops.energy_head(fwd.adversarial, y)
        e_adv = adv.energy.mean()
        if need["align"]:
            positive = lab.energy.mean() if cfg.align_positives == "paired" else e_pos
            align = positive - e_adv
            total = total + cfg.w_align * align
        if need["ce_adv"]:
            ce_adv = adv.ce.mean()
            total = total + cfg.w_ce_adv * ce_adv
    with torch.no_grad():
        acc = (fwd.labelled.argmax(1) == y).float().mean() if fwd.labelled is not None else None
        acc_adv = (
            (fwd.adversarial.argmax(1) == y).float().mean() if fwd.adversarial is not None else None
        )
    return LossTerms(total, px, ce, align, ce_adv, e_pos, e_q, e_adv, acc, acc_adv)

"""Generation metrics: fresh SGLD samples, the Fréchet distance, a digits feature space
(`fid_digits`), Inception FID / IS / KID through torch-fidelity, and the official "buffer FID".

Why several: Inception FID is the number papers cite, but its weights may be unavailable offline
and it means little on 8x8 digits. `fid_digits` is the same Fréchet distance in the feature space
of a small digits classifier that the package trains deterministically and caches; it is always
reported under its own name, never as "fid". The official evaluation (see docs/method-notes.md,
'The official evaluation') scores the most confident 90% of the training replay buffer rather
than fresh samples; `buffer_samples_official` reproduces that selection so it can be reported,
labelled, next to the fresh-sample numbers.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ebjdat.models.jem import JEM
from ebjdat.sampling import ClassGaussians, SGLDConfig

# ---- fresh samples ------------------------------------------------------------------------------


def _bn_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_buffers()}


def _restore_buffers(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for k, v in model.named_buffers():
            v.copy_(saved[k])


@torch.no_grad()
def draw_samples(
    model: JEM,
    n: int,
    sampler: SGLDConfig,
    *,
    start: str = "noise",
    conditional: bool = False,
    gaussians: ClassGaussians | None = None,
    labels: torch.Tensor | None = None,
    shape: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 500,
    progress: bool = True,
    on_start: Callable[[torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """`n` fresh SGLD samples as [0, 1] images on the CPU (the caller records the settings).

    start="noise" begins from U(-1, 1) in the model's internal units (needs `shape` or
    `gaussians`); start="class" from the class-conditional Gaussians, with `labels` [n] choosing
    the class per sample (default: i % K, balanced over the classes).
    conditional=True samples p(x, y) with those labels instead of p(x). bn_train=True runs BN in
    train mode as the JEM++/SADA-JEM training sampler does; the running statistics are saved and
    restored so that evaluation afterwards sees the checkpoint's model unchanged.
    on_start receives each batch's starting images as [0, 1] CPU images, exactly what 0 SGLD
    steps would return: the init-only baseline of these very chains.
    """
    from tqdm import tqdm

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if start not in ("noise", "class"):
        raise ValueError(f"start must be 'noise' or 'class', got {start!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    if start == "class" or conditional:
        if start == "class" and gaussians is None:
            raise ValueError("start='class' needs the fitted class Gaussians (gaussians=...)")
        k = gaussians.num_classes if gaussians is not None else model.num_classes
        if labels is None:
            labels = torch.arange(n) % k
        labels = labels.to(device).long()
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if shape is None:
        if gaussians is None:
            raise ValueError("start='noise' needs the image shape (shape=(C, H, W))")
        shape = gaussians.shape
    if gaussians is not None:
        gaussians = gaussians.to(device)
    saved = _bn_buffers(model) if sampler.bn_train else None
    out = []
    try:
        bar = tqdm(
            total=n,
            desc=f"SGLD samples ({sampler.steps} steps)",
            unit="img",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        for lo in range(0, n, batch_size):
            m = min(batch_size, n - lo)
            y = None if labels is None else labels[lo : lo + m]
            if start == "class":
                assert gaussians is not None and y is not None
                z0 = gaussians.sample(m, classes=y, generator=generator)
            else:
                z0 = torch.rand(m, *shape, device=device, generator=generator) * 2 - 1
            if on_start is not None:
                on_start(JEM.from_internal(z0.float()).clamp(0, 1).cpu())
            z = sampler(model, z0, y=y if conditional else None, generator=generator)
            out.append(JEM.from_internal(z.float()).clamp(0, 1).cpu())
            bar.update(m)
        bar.close()
    finally:
        if saved is not None:
            _restore_buffers(model, saved)
    return torch.cat(out)


# ---- the Fréchet distance ------------------------------------------------------------------------


def _sqrt_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray | torch.Tensor,
    sigma1: np.ndarray | torch.Tensor,
    mu2: np.ndarray | torch.Tensor,
    sigma2: np.ndarray | torch.Tensor,
) -> float:
    """d² = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½) between N(μ1, Σ1) and N(μ2, Σ2).

    Computed in float64 through symmetric eigendecompositions: tr (Σ1 Σ2)^½ equals
    Σ √λ(Σ1^½ Σ2 Σ1^½), whose matrix is symmetric PSD. Unlike scipy's `sqrtm` of the
    non-symmetric product, this never returns complex parts or NaN for the rank-deficient
    covariances that small sample sets give.
    """
    m1, m2 = (np.asarray(torch.as_tensor(m).double().cpu(), dtype=np.float64) for m in (mu1, mu2))
    s1, s2 = (
        np.asarray(torch.as_tensor(s).double().cpu(), dtype=np.float64) for s in (sigma1, sigma2)
    )
    if m1.ndim != 1 or m1.shape != m2.shape:
        raise ValueError(f"means must be vectors of one length, got {m1.shape} and {m2.shape}")
    d = m1.shape[0]
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"covariances must be {d}x{d}, got {s1.shape} and {s2.shape}")
    r1 = _sqrt_psd(s1)
    mid = r1 @ ((s2 + s2.T) / 2) @ r1
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((mid + mid.T) / 2), 0, None)).sum())
    diff = m1 - m2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    return max(value, 0.0)


def feature_statistics(features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of [N, F] features, in float64."""
    f = np.asarray(features.detach().double().cpu(), dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, F], got shape {tuple(f.shape)}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


# ---- the digits feature space (fid_digits) -------------------------------------------------------

DIGITS_EXTRACTOR_VERSION = "digits-cnn-v1"
_DIGITS_SEED = 20240601
_DIGITS_EPOCHS = 12


class DigitsFeatureNet(nn.Module):
    """A small CNN for 8x8 digits; its 64-d penultimate layer is the fid_digits feature space."""

    feature_dim = 64

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, self.feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        return self.body(x01 * 2 - 1)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x01))


def cache_dir() -> Path:
    """$EBJDAT_CACHE if set, else ~/.cache/ebjdat."""
    env = os.environ.get("EBJDAT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ebjdat"


def _train_digits_extractor() -> DigitsFeatureNet:
    """Deterministic: fixed seed, fixed epochs, CPU float32, the fixed digits train split."""
    from ebjdat.data import load_split_tensors

    x, y = load_split_tensors("digits", "train")
    x, y = x.float(), y.long()
    g = torch.Generator().manual_seed(_DIGITS_SEED)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_DIGITS_SEED)
        net = DigitsFeatureNet()
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    net.train()
    with torch.inference_mode(False), torch.enable_grad():  # callers may run under no_grad
        _fit(net, opt, x, y, g)
    return net.eval()


def _fit(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    g: torch.Generator,
) -> None:
    for _ in range(_DIGITS_EPOCHS):
        order = torch.randperm(x.shape[0], generator=g)
        for lo in range(0, x.shape[0], 64):
            idx = order[lo : lo + 64]
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


_EXTRACTOR: dict[str, DigitsFeatureNet] = {}


def digits_extractor() -> DigitsFeatureNet:
    """The cached digits feature net (trained once, a few seconds on a CPU, then loaded)."""
    path = cache_dir() / f"{DIGITS_EXTRACTOR_VERSION}.pt"
    key = str(path)
    if key in _EXTRACTOR:
        return _EXTRACTOR[key]
    net = DigitsFeatureNet()
    state: dict[str, Any] | None = None
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception:  # noqa: BLE001 - a damaged cache file is rebuilt, never fatal
            state = None
    if state is None:
        net = _train_digits_extractor()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(net.state_dict(), tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
    net.eval().requires_grad_(False)
    _EXTRACTOR[key] = net
    return net


@torch.no_grad()
def digits_features(x01: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Penultimate-layer features [N, 64] of 8x8 digit images in [0, 1] ([N, 1, 8, 8])."""
    if x01.dim() != 4 or tuple(x01.shape[1:]) != (1, 8, 8):
        raise ValueError(f"digits_features needs [N, 1, 8, 8] images, got {tuple(x01.shape)}")
    net = digits_extractor()
    x = x01.detach().float().cpu()
    return torch.cat([net.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def fid_digits(samples01: torch.Tensor, reference01: torch.Tensor) -> float:
    """Fréchet distance between samples and reference in the digits feature space.

    Not comparable to Inception FID, hence the name: report it as `fid_digits`.
    """
    mu1, s1 = feature_statistics(digits_features(samples01))
    mu2, s2 = feature_statistics(digits_features(reference01))
    return frechet_distance(mu1, s1, mu2, s2)


# ---- Inception FID / IS / KID (torch-fidelity) ---------------------------------------------------

INCEPTION_WEIGHTS_ENV = "EBJDAT_INCEPTION_WEIGHTS"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


class InceptionUnavailable(RuntimeError):
    """torch-fidelity or its Inception weights cannot be had (no package, no file, no network)."""


def inception_weights_path() -> Path:
    """Where the weights are looked for: $EBJDAT_INCEPTION_WEIGHTS, else torch-fidelity's own
    download location in the torch hub cache ($TORCH_HOME/hub/checkpoints/<file>)."""
    env = os.environ.get(INCEPTION_WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def _unavailable_message(reason: str) -> str:
    from_url = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
    return (
        f"Inception FID/IS/KID unavailable: {reason}. Provide the torch-fidelity Inception "
        f"weights ({from_url}) at {inception_weights_path()} (torch-fidelity's download "
        f"location, under $TORCH_HOME/hub/checkpoints) or point ${INCEPTION_WEIGHTS_ENV} at the "
        "file; torch-fidelity itself installs with `pip install torch-fidelity`"
    )


def inception_extractor(device: str | torch.device = "cpu", *, download: bool = True) -> nn.Module:
    """torch-fidelity's InceptionV3 (features '2048' and 'logits_unbiased'), or
    InceptionUnavailable with a message that says how to provide the weights."""
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import (
            URL_INCEPTION_V3,
            FeatureExtractorInceptionV3,
        )
    except ImportError:
        raise InceptionUnavailable(
            _unavailable_message("torch-fidelity is not installed")
        ) from None
    path = inception_weights_path()
    if not path.is_file():
        env_set = bool(os.environ.get(INCEPTION_WEIGHTS_ENV))
        if env_set or not download:
            raise InceptionUnavailable(_unavailable_message(f"no weights file at {path}"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), progress=True)
        except Exception as err:  # noqa: BLE001 - any network failure means "not available"
            raise InceptionUnavailable(
                _unavailable_message(
                    f"no weights file at {path} and the download failed "
                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
                )
            ) from None
    try:
        torch.load(path, map_location="cpu", weights_only=True)  # refuse anything but tensors
    except Exception as err:  # noqa: BLE001
        raise InceptionUnavailable(
            _unavailable_message(f"{path} is not a readable weights file ({type(err).__name__})")
        ) from None
    net = FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
    )
    return net.to(device).eval()


def _to_uint8_rgb(x01: torch.Tensor) -> torch.Tensor:
    x = (x01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"Inception needs 1- or 3-channel images, got {x.shape[1]} channels")
    return x


@torch.no_grad()
def inception_features(
    net: nn.Module, x01: torch.Tensor, batch_size: int = 200, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pool features [N, 2048], unbiased logits [N, 1008]) of [0, 1] images."""
    from tqdm import tqdm

    device = next(net.parameters()).device
    pools, logits = [], []
    for lo in tqdm(
        range(0, len(x01), batch_size),
        desc="Inception features",
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    ):
        p, lg = net(_to_uint8_rgb(x01[lo : lo + batch_size]).to(device))
        pools.append(p.double().cpu())
        logits.append(lg.double().cpu())
    return torch.cat(pools), torch.cat(logits)


def inception_metrics(
    samples01: torch.Tensor,
    reference01: torch.Tensor,
    *,
    kid: bool = True,
    device: str | torch.device = "cpu",
    download: bool = True,
    progress: bool = True,
    extractor: nn.Module | None = None,
) -> dict[str, float]:
    """{fid, inception_score, inception_score_std, kid, kid_std} with torch-fidelity's
    feature-level functions and Inception (uint8 inputs, as the official evaluation feeds them).
    Raises InceptionUnavailable when the weights are neither on disk nor downloadable.
    `extractor` reuses a net from `inception_extractor` across calls."""
    net = extractor if extractor is not None else inception_extractor(device, download=download)
    pool_s, logit_s = inception_features(net, samples01, progress=progress)
    pool_r, _ = inception_features(net, reference01, progress=progress)
    return inception_metrics_from_features(pool_s, logit_s, pool_r, kid=kid)


def inception_metrics_from_features(
    pool_s: torch.Tensor, logit_s: torch.Tensor, pool_r: torch.Tensor, *, kid: bool = True
) -> dict[str, float]:
    """The metrics of inception_metrics from features already extracted, so that one
    reference pass serves several sample sets (fresh samples, their starts, real images)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric

    fid = fid_statistics_to_metric(
        fid_features_to_statistics(pool_s), fid_features_to_statistics(pool_r), verbose=False
    )["frechet_inception_distance"]
    isc = isc_features_to_metric(logit_s, splits=10)
    out = {
        "fid": float(fid),
        "inception_score": float(isc["inception_score_mean"]),
        "inception_score_std": float(isc["inception_score_std"]),
    }
    if kid:
        subset = min(1000, len(pool_s), len(pool_r))
        k = kid_features_to_metric(
            pool_s, pool_r, kid_subsets=100, kid_subset_size=subset, verbose=False
        )
        out["kid"] = float(k["kernel_inception_distance_mean"])
        out["kid_std"] = float(k["kernel_inception_distance_std"])
    return out


# ---- how many samples ----------------------------------------------------------------------------

MIN_UNBIASED_SAMPLES = 10_000  # below this, FID and IS depend visibly on the sample count
MAX_GEN_SAMPLES = 50_000  # the usual count for numbers to cite; more only costs time


def sample_count_warning(n: int, metrics: str) -> str | None:
    """The report's warning when `metrics` come from fewer than 10,000 samples, else None.

    The Fréchet distance of a finite set is biased upward by an amount that shrinks with N, and
    IS downward; KID is unbiased but noisy. Numbers from different N are not comparable, and
    papers quote 10k-50k samples."""
    if n >= MIN_UNBIASED_SAMPLES:
        return None
    return (
        f"{metrics} from {n:,} samples (fewer than {MIN_UNBIASED_SAMPLES:,}) are biased (FID "
        "upward, IS downward, KID noisy): compare only with numbers from the same sample count, "
        f"and use --gen-n {MIN_UNBIASED_SAMPLES} or more (up to {MAX_GEN_SAMPLES}) for numbers "
        "to cite"
    )


# ---- the official "buffer FID" selection ---------------------------------------------------------


@torch.no_grad()
def buffer_samples_official(
    model: JEM, buffer_internal: torch.Tensor, ratio: float = 0.9, batch_size: int = 500
) -> torch.Tensor:
    """The images the official `--eval fid` scores, as [0, 1] CPU images.

    Every replay-buffer image is classified; per predicted class the int(count * ratio) most
    confident (max softmax) are kept. These are training-time chain states selected by the model
    itself, not fresh samples: report their FID under a name that says so (`buffer_fid...`).
    ValueError when the buffer or the model's confidences on it are not finite (the ranking
    would be arbitrary) or when the selection comes out empty.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
    if buffer_internal.dim() != 4 or buffer_internal.shape[0] == 0:
        raise ValueError(
            f"buffer must be [N, C, H, W] with N > 0, got {tuple(buffer_internal.shape)}"
        )
    device = next(model.parameters()).device
    buf = buffer_internal.detach().float()
    broken = int((~torch.isfinite(buf.flatten(1)).all(dim=1)).sum())
    if broken:
        raise ValueError(f"{broken} of {len(buf)} replay-buffer images are not finite")
    conf, pred = [], []
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(buf), batch_size):
            p = torch.softmax(model.logits_internal(buf[lo : lo + batch_size].to(device)), dim=1)
            c, k = p.max(dim=1)
            conf.append(c.cpu())
            pred.append(k.cpu())
    finally:
        model.train(was_training)
    conf_t, pred_t = torch.cat(conf), torch.cat(pred)
    if not bool(torch.isfinite(conf_t).all()):
        bad = int((~torch.isfinite(conf_t)).sum())
        raise ValueError(
            f"the model's confidences on {bad} of {len(conf_t)} replay-buffer images are not "
            "finite, so the selection would be arbitrary"
        )
    keep = []
    for k in pred_t.unique().tolist():
        idx = torch.nonzero(pred_t == k).squeeze(1)
        top = int(len(idx) * ratio)
        if top > 0:
            keep.append(idx[conf_t[idx].topk(top).indices])
    if not keep:
        raise ValueError("the buffer selection is empty (too few images for this ratio)")
    chosen = torch.cat(keep).sort().values
    return JEM.from_internal(buf[chosen].cpu()).clamp(0, 1)


def grid_rows(n: int) -> int:
    """Images per grid row for a roughly square grid."""
    return max(1, int(math.ceil(math.sqrt(n))))

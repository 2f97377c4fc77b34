"""Per-class Gaussians: JEM++/SADA-JEM's informative replay-buffer init.

Fitted locally from training images (flattened, internal [-1, 1] range). The full covariance is
the official estimator: mean, biased covariance (divide by n), plus jitter * I (1e-4) before the
Cholesky factorisation that MultivariateNormal would do. Samples are clipped to [-1, 1]. Which
images is the caller's choice: the official code fits one epoch of its augmented, noisy training
loader (training's sgld.gaussian_fit = "augmented"); training's default and evaluation fit the
clean images.

A full D x D covariance does not scale: at 3x64x64 (D = 12,288) it is about 600 MB per class in
float32, so 100 classes cannot be held. Above `FULL_COVARIANCE_MAX_DIM` the fit is low-rank plus
diagonal instead: Sigma ~ W W^T + diag(v), W [D, r] the top-r principal directions of the class's
centred images scaled by their standard deviations, and v the per-pixel variance that W leaves
out (plus the jitter), so each pixel keeps its exact variance. With r at least the number of
images of a class, W W^T is that class's covariance exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

# The sync-free draw materialises [K, n, D]; above this many elements the grouped draw is used.
ALL_CLASSES_MAX_ELEMENTS = 1 << 26
# Largest D fitted with a full covariance by default: 3x32x32 (3,072, the CIFAR/SVHN setting)
# and 1x64x64 (4,096) stay full (64 MB per class at most in float32); 3x64x64 does not.
FULL_COVARIANCE_MAX_DIM = 4096
LOWRANK_RANK = 32  # default rank r of the low-rank kind: K * D * (r + 2) floats in all
# Largest side of the Gram matrix whose eigendecomposition is exact; above it the top-r
# directions come from a seeded randomized range finder.
EXACT_EIGH_MAX_DIM = 4096
COVARIANCES = ("auto", "full", "lowrank")

_logger = logging.getLogger(__name__)


def _size(n_bytes: int) -> str:
    """A human size for the log line: KiB, MiB or GiB."""
    if n_bytes >= 2**30:
        return f"{n_bytes / 2**30:.2f} GiB"
    if n_bytes >= 2**20:
        return f"{n_bytes / 2**20:.1f} MiB"
    return f"{n_bytes / 2**10:.1f} KiB"


def _top_directions(a: torch.Tensor, r: int) -> torch.Tensor:
    """W [D, r'] (r' = min(r, n, D)) with W W^T the best rank-r' approximation of a^T a, for
    a [n, D] float64. Exact through the smaller Gram matrix when its side is at most
    EXACT_EIGH_MAX_DIM; otherwise a randomized range finder with its own seeded generator, so
    the global RNG (and with it a run's reproducibility) is left alone."""
    n, d = a.shape
    r = min(r, n, d)
    if min(n, d) <= EXACT_EIGH_MAX_DIM:
        if n <= d:
            _, u = torch.linalg.eigh(a @ a.T)  # ascending eigenvalues
            return a.T @ u.flip(1)[:, :r]  # = V diag(s): W W^T = a^T P_r a
        lam, v = torch.linalg.eigh(a.T @ a)
        return v.flip(1)[:, :r] * lam.flip(0)[:r].clamp_min(0).sqrt()
    g = torch.Generator(a.device).manual_seed(0)
    q = min(r + 10, n, d)
    y = a @ torch.randn(d, q, generator=g, device=a.device, dtype=a.dtype)
    for _ in range(4):  # power iterations sharpen the spectrum
        y = a @ torch.linalg.qr(a.T @ torch.linalg.qr(y).Q).Q
    basis = torch.linalg.qr(y).Q  # [n, q]
    _, s, vh = torch.linalg.svd(basis.T @ a, full_matrices=False)
    return vh[:r].T * s[:r]


class ClassGaussians:
    """N(mu_c, Sigma_c) for each class c, as means [K, D] and either Cholesky factors
    `scale_tril` [K, D, D] of Sigma_c + jitter * I (covariance "full") or low-rank factors
    `factor` [K, D, r] plus per-pixel standard deviations `diag_std` [K, D] with
    Sigma_c = W W^T + diag(diag_std^2) (covariance "lowrank"). Build with
    `ClassGaussians().fit(images, labels, num_classes)`."""

    def __init__(self) -> None:
        self.means: torch.Tensor | None = None
        self.scale_tril: torch.Tensor | None = None
        self.factor: torch.Tensor | None = None
        self.diag_std: torch.Tensor | None = None
        self.shape: tuple[int, ...] = ()
        self.jitter: float = 1e-4

    # -- fitting ---------------------------------------------------------------------------
    @torch.no_grad()
    def fit(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        jitter: float = 1e-4,
        *,
        dtype: torch.dtype = torch.float32,
        covariance: str = "auto",
        rank: int | None = None,
        log: Callable[[str], None] | None = None,
    ) -> ClassGaussians:
        """Fit in float64 (covariances of 3072-d images lose PD-ness in float32), store in
        `dtype` on images' device; returns self. Every class needs at least one image.

        `covariance` "auto" is "full" up to D = FULL_COVARIANCE_MAX_DIM and "lowrank" (rank
        `rank`, default LOWRANK_RANK) above; `log` (default: this module's logger) is told which
        kind was chosen and why."""
        if images.dim() < 2 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images [N, ...] and labels [N] disagree: {tuple(images.shape)} vs "
                f"{tuple(labels.shape)}"
            )
        if jitter <= 0:
            raise ValueError(f"jitter must be > 0, got {jitter}")
        if covariance not in COVARIANCES:
            raise ValueError(
                f"covariance must be one of {', '.join(COVARIANCES)}, got {covariance!r}"
            )
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"rank must be a positive integer or None, got {rank!r}")
        shape = tuple(images.shape[1:])
        d = math.prod(shape)
        flat = images.reshape(images.shape[0], d)
        labels = labels.to(flat.device)
        kind = covariance
        if kind == "auto":
            kind = "full" if d <= FULL_COVARIANCE_MAX_DIM else "lowrank"
        counts = torch.bincount(labels.long(), minlength=num_classes)[:num_classes].tolist()
        for k, m in enumerate(counts):
            if m == 0:
                raise ValueError(f"class {k} has no training images to fit a Gaussian to")
        r = min(LOWRANK_RANK if rank is None else rank, d, max(counts))
        itemsize = torch.empty((), dtype=dtype).element_size()
        full_bytes = num_classes * d * d * itemsize
        lowrank_bytes = num_classes * d * (r + 2) * itemsize
        dims = "x".join(str(s) for s in shape)
        why = (
            f"D = {dims} = {d} {'<=' if d <= FULL_COVARIANCE_MAX_DIM else '>'} "
            f"{FULL_COVARIANCE_MAX_DIM}" if covariance == "auto" else "as requested"
        )
        if kind == "full":
            message = (
                f"class Gaussians: full covariance ({why}); {num_classes} classes take "
                f"{_size(full_bytes)}"
            )
        else:
            message = (
                f"class Gaussians: low-rank covariance, rank {r} plus diagonal ({why}); "
                f"{num_classes} classes take {_size(lowrank_bytes)} instead of "
                f"{_size(full_bytes)} for full covariances"
            )
        (log or _logger.info)(message)
        if kind == "full":
            self._fit_full(flat, labels, num_classes, jitter, dtype)
        else:
            self._fit_lowrank(flat, labels, num_classes, jitter, dtype, r)
        self.shape, self.jitter = shape, float(jitter)
        return self

    def _fit_full(
        self,
        flat: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        jitter: float,
        dtype: torch.dtype,
    ) -> None:
        d = flat.shape[1]
        means = torch.empty(num_classes, d, dtype=dtype, device=flat.device)
        tril = torch.empty(num_classes, d, d, dtype=dtype, device=flat.device)
        eye = torch.eye(d, dtype=torch.float64, device=flat.device)
        for k in range(num_classes):
            xk = flat[labels == k].to(torch.float64)
            mu = xk.mean(dim=0)
            sub = xk - mu
            cov = sub.T @ sub / xk.shape[0] + jitter * eye
            chol, info = torch.linalg.cholesky_ex(cov)
            if int(info) != 0:
                raise RuntimeError(f"class {k}: covariance + {jitter:g} I is not positive definite")
            means[k] = mu.to(dtype)
            tril[k] = chol.to(dtype)
        self.means, self.scale_tril, self.factor, self.diag_std = means, tril, None, None

    def _fit_lowrank(
        self,
        flat: torch.Tensor,
        labels: torch.Tensor,
        num_classes: int,
        jitter: float,
        dtype: torch.dtype,
        rank: int,
    ) -> None:
        d = flat.shape[1]
        means = torch.empty(num_classes, d, dtype=dtype, device=flat.device)
        factor = torch.zeros(num_classes, d, rank, dtype=dtype, device=flat.device)
        diag_std = torch.empty(num_classes, d, dtype=dtype, device=flat.device)
        for k in range(num_classes):
            xk = flat[labels == k].to(torch.float64)
            mu = xk.mean(dim=0)
            a = (xk - mu) / math.sqrt(xk.shape[0])  # a^T a: the biased covariance
            w = _top_directions(a, rank)
            # What W leaves out of each pixel's variance (>= 0 up to rounding), plus the jitter.
            rest = (a.square().sum(0) - w.square().sum(1)).clamp_min(0) + jitter
            means[k] = mu.to(dtype)
            factor[k, :, : w.shape[1]] = w.to(dtype)
            diag_std[k] = rest.sqrt().to(dtype)
        self.means, self.scale_tril, self.factor, self.diag_std = means, None, factor, diag_std

    # -- description -----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return 0 if self.means is None else self.means.shape[0]

    @property
    def covariance(self) -> str:
        """The kind fitted or loaded: "full" or "lowrank"."""
        self._fitted()
        return "full" if self.scale_tril is not None else "lowrank"

    @property
    def rank(self) -> int:
        """r of the low-rank kind; D for the full one."""
        means = self._fitted()
        return means.shape[1] if self.factor is None else self.factor.shape[2]

    @property
    def nbytes(self) -> int:
        """Memory held by the fitted tensors."""
        self._fitted()
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def covariance_matrix(self, k: int) -> torch.Tensor:
        """Sigma_k [D, D] of class k as sampled (before clipping): for checks on small D."""
        self._fitted()
        if self.scale_tril is not None:
            return self.scale_tril[k] @ self.scale_tril[k].T
        assert self.factor is not None and self.diag_std is not None
        return self.factor[k] @ self.factor[k].T + torch.diag(self.diag_std[k].square())

    @property
    def device(self) -> torch.device:
        return self._fitted().device

    def _tensors(self) -> list[torch.Tensor]:
        every = (self.means, self.scale_tril, self.factor, self.diag_std)
        return [t for t in every if t is not None]

    def _fitted(self) -> torch.Tensor:
        if self.means is None or (self.scale_tril is None and self.factor is None):
            raise RuntimeError("ClassGaussians is not fitted: call fit() or load_state_dict()")
        return self.means

    # -- sampling --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        classes: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """n images [n, *shape] in [-1, 1]; classes [n] (uniform when None) choose the
        Gaussian per image. All draws use `generator` (on the Gaussians' device)."""
        means = self._fitted()
        dev, k_total, d = means.device, means.shape[0], means.shape[1]
        # Random classes (a training iteration's re-initialisations) are drawn without a host
        # sync on CUDA; given classes are checked by the grouped draw.
        sync_free = classes is None and dev.type == "cuda"
        if classes is None:
            classes = torch.randint(k_total, (n,), generator=generator, device=dev)
        else:
            classes = classes.to(dev).long()
            if classes.shape != (n,):
                raise ValueError(f"classes must have shape ({n},), got {tuple(classes.shape)}")
        # Full: D normals per image; low-rank: r for the factor, then D for the diagonal.
        width = d if self.factor is None else self.factor.shape[2] + d
        eps = torch.randn(n, width, generator=generator, device=dev, dtype=means.dtype)
        if sync_free and n * k_total * d <= ALL_CLASSES_MAX_ELEMENTS:
            out = self._draw_all_classes(eps, classes)
        else:
            out = self._draw_grouped(eps, classes)
        return out.clamp_(-1.0, 1.0).reshape(n, *self.shape)

    def _draw_grouped(self, eps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Rows grouped by class, one [m, D] x [D, D] (or [m, r] x [r, D]) matmul each: the
        fewest FLOPs, but the group sizes are read on the host (a sync on CUDA)."""
        means = self._fitted()
        k_total, d = means.shape
        out = torch.empty(eps.shape[0], d, dtype=eps.dtype, device=eps.device)
        order = torch.argsort(classes, stable=True)
        counts = torch.bincount(classes, minlength=k_total).tolist()
        if len(counts) > k_total:
            raise ValueError(f"classes must lie in [0, {k_total})")
        start = 0
        for k, m in enumerate(counts):
            if m:
                rows = order[start : start + m]
                e = eps[rows]
                if self.scale_tril is not None:
                    out[rows] = torch.addmm(means[k], e, self.scale_tril[k].T)
                else:
                    assert self.factor is not None and self.diag_std is not None
                    r = self.factor.shape[2]
                    x = torch.addmm(means[k], e[:, :r], self.factor[k].T)
                    out[rows] = x.addcmul_(e[:, r:], self.diag_std[k])
                start += m
        return out

    def _draw_all_classes(self, eps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Every row through every class's transform, then each row's own class picked: K times
        the FLOPs of the grouped draw but no host sync, which is what a training iteration on a
        GPU wants for its per-step re-initialisations."""
        means = self._fitted()
        k_total, n = means.shape[0], eps.shape[0]
        rows = torch.arange(n, device=eps.device)
        if self.scale_tril is not None:
            every = torch.baddbmm(
                means[:, None, :], eps.expand(k_total, *eps.shape), self.scale_tril.transpose(1, 2)
            )
            return every[classes, rows]
        assert self.factor is not None and self.diag_std is not None
        r = self.factor.shape[2]
        low = eps[:, :r]
        every = torch.baddbmm(
            means[:, None, :], low.expand(k_total, *low.shape), self.factor.transpose(1, 2)
        )
        return every[classes, rows].addcmul_(eps[:, r:], self.diag_std[classes])

    def to(self, device: torch.device | str) -> ClassGaussians:
        """A copy on `device` (self when already there)."""
        if self._fitted().device == torch.device(device):
            return self
        other = ClassGaussians()
        other.load_state_dict({k: v.to(device) for k, v in self.state_dict().items()})
        return other

    # -- checkpointing (tensors only: loaded with weights_only=True) ---------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full: means, scale_tril; low-rank: means, factor, diag_std; both: shape, jitter."""
        self._fitted()
        state = {"means": self.means}
        if self.scale_tril is not None:
            state["scale_tril"] = self.scale_tril
        else:
            state["factor"], state["diag_std"] = self.factor, self.diag_std
        state["shape"] = torch.tensor(self.shape, dtype=torch.int64)
        state["jitter"] = torch.tensor(self.jitter, dtype=torch.float64)
        return state  # type: ignore[return-value]

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        means = state["means"]
        shape = tuple(int(s) for s in state["shape"].tolist())
        if means.dim() != 2:
            raise ValueError(f"state: means must be [K, D], got {tuple(means.shape)}")
        if math.prod(shape) != means.shape[1]:
            raise ValueError(f"state: shape {shape} does not have {means.shape[1]} elements")
        if "scale_tril" in state:
            tril = state["scale_tril"]
            if tril.shape != (*means.shape, means.shape[1]):
                raise ValueError("state: means [K, D] and scale_tril [K, D, D] disagree")
            tril, factor, diag_std = tril.to(means.device), None, None
        elif "factor" in state and "diag_std" in state:
            factor, diag_std = state["factor"], state["diag_std"]
            bad = factor.dim() != 3 or factor.shape[:2] != means.shape
            if bad or diag_std.shape != means.shape:
                raise ValueError(
                    "state: means [K, D], factor [K, D, r] and diag_std [K, D] disagree"
                )
            tril, factor, diag_std = None, factor.to(means.device), diag_std.to(means.device)
        else:
            raise ValueError("state: needs scale_tril (full) or factor and diag_std (lowrank)")
        self.means, self.scale_tril, self.factor, self.diag_std = means, tril, factor, diag_std
        self.shape, self.jitter = shape, float(state["jitter"])


def fit_class_gaussians(
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    jitter: float = 1e-4,
    covariance: str = "auto",
    rank: int | None = None,
    log: Callable[[str], None] | None = None,
) -> ClassGaussians:
    """The class Gaussians of training images given as uint8 or float pixels [N, C, H, W] ([0,
    1], or a little beyond after data noise): converted to the model's internal [-1, 1] units
    here, so that training, evaluation and sampling all fit the same Gaussians from the same
    pixels. `covariance`, `rank` and `log` as
    in `ClassGaussians.fit` (large images get the low-rank kind, and `log` hears why)."""
    from ebjdat.data import to_float01
    from ebjdat.models.jem import JEM

    return ClassGaussians().fit(
        JEM.to_internal(to_float01(images)),
        labels,
        num_classes,
        jitter,
        covariance=covariance,
        rank=rank,
        log=log,
    )

"""Per-class full-covariance Gaussians: JEM++/SADA-JEM's informative replay-buffer init.

Fitted locally from the training images (flattened, internal [-1, 1] range) exactly as the
official `category_mean`: mean, biased covariance (divide by n), plus jitter * I (1e-4) before
the Cholesky factorisation that MultivariateNormal would do. Samples are clipped to [-1, 1].
"""

from __future__ import annotations

import math

import torch

# The sync-free draw materialises [K, n, D]; above this many elements the grouped draw is used.
ALL_CLASSES_MAX_ELEMENTS = 1 << 26


class ClassGaussians:
    """N(mu_c, Sigma_c + jitter * I) for each class c, stored as means [K, D] and Cholesky
    factors [K, D, D]. Build with `ClassGaussians().fit(images, labels, num_classes)`."""

    def __init__(self) -> None:
        self.means: torch.Tensor | None = None
        self.scale_tril: torch.Tensor | None = None
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
    ) -> ClassGaussians:
        """Fit in float64 (covariances of 3072-d images lose PD-ness in float32), store in
        `dtype` on images' device; returns self. Every class needs at least one image."""
        if images.dim() < 2 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"images [N, ...] and labels [N] disagree: {tuple(images.shape)} vs "
                f"{tuple(labels.shape)}"
            )
        if jitter <= 0:
            raise ValueError(f"jitter must be > 0, got {jitter}")
        shape = tuple(images.shape[1:])
        d = math.prod(shape)
        flat = images.reshape(images.shape[0], d)
        labels = labels.to(flat.device)
        means = torch.empty(num_classes, d, dtype=dtype, device=flat.device)
        tril = torch.empty(num_classes, d, d, dtype=dtype, device=flat.device)
        eye = torch.eye(d, dtype=torch.float64, device=flat.device)
        for k in range(num_classes):
            xk = flat[labels == k].to(torch.float64)
            if xk.shape[0] == 0:
                raise ValueError(f"class {k} has no training images to fit a Gaussian to")
            mu = xk.mean(dim=0)
            sub = xk - mu
            cov = sub.T @ sub / xk.shape[0] + jitter * eye
            chol, info = torch.linalg.cholesky_ex(cov)
            if int(info) != 0:
                raise RuntimeError(f"class {k}: covariance + {jitter:g} I is not positive definite")
            means[k] = mu.to(dtype)
            tril[k] = chol.to(dtype)
        self.means, self.scale_tril, self.shape, self.jitter = means, tril, shape, float(jitter)
        return self

    # -- sampling --------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return 0 if self.means is None else self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self._fitted().device

    def _fitted(self) -> torch.Tensor:
        if self.means is None or self.scale_tril is None:
            raise RuntimeError("ClassGaussians is not fitted: call fit() or load_state_dict()")
        return self.means

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
        eps = torch.randn(n, d, generator=generator, device=dev, dtype=means.dtype)
        if sync_free and n * k_total * d <= ALL_CLASSES_MAX_ELEMENTS:
            out = self._draw_all_classes(eps, classes)
        else:
            out = self._draw_grouped(eps, classes)
        return out.clamp_(-1.0, 1.0).reshape(n, *self.shape)

    def _draw_grouped(self, eps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Rows grouped by class, one [m, D] x [D, D] matmul each: the fewest FLOPs, but the
        group sizes are read on the host (a sync on CUDA)."""
        means = self._fitted()
        k_total = means.shape[0]
        out = torch.empty_like(eps)
        order = torch.argsort(classes, stable=True)
        counts = torch.bincount(classes, minlength=k_total).tolist()
        if len(counts) > k_total:
            raise ValueError(f"classes must lie in [0, {k_total})")
        start = 0
        for k, m in enumerate(counts):
            if m:
                rows = order[start : start + m]
                out[rows] = torch.addmm(means[k], eps[rows], self.scale_tril[k].T)
                start += m
        return out

    def _draw_all_classes(self, eps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Every row through every class's transform, then each row's own class picked: K times
        the FLOPs of the grouped draw but no host sync, which is what a training iteration on a
        GPU wants for its per-step re-initialisations."""
        means = self._fitted()
        k_total, (n, d) = means.shape[0], eps.shape
        every = torch.baddbmm(
            means[:, None, :], eps.expand(k_total, n, d), self.scale_tril.transpose(1, 2)
        )
        return every[classes, torch.arange(n, device=eps.device)]

    def to(self, device: torch.device | str) -> ClassGaussians:
        """A copy on `device` (self when already there)."""
        if self._fitted().device == torch.device(device):
            return self
        other = ClassGaussians()
        other.load_state_dict({k: v.to(device) for k, v in self.state_dict().items()})
        return other

    # -- checkpointing (tensors only: loaded with weights_only=True) ---------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        self._fitted()
        return {
            "means": self.means,
            "scale_tril": self.scale_tril,
            "shape": torch.tensor(self.shape, dtype=torch.int64),
            "jitter": torch.tensor(self.jitter, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        means, tril = state["means"], state["scale_tril"]
        shape = tuple(int(s) for s in state["shape"].tolist())
        if means.dim() != 2 or tril.shape != (*means.shape, means.shape[1]):
            raise ValueError("state: means [K, D] and scale_tril [K, D, D] disagree")
        if math.prod(shape) != means.shape[1]:
            raise ValueError(f"state: shape {shape} does not have {means.shape[1]} elements")
        self.means, self.scale_tril, self.shape = means, tril.to(means.device), shape
        self.jitter = float(state["jitter"])


def fit_class_gaussians(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, jitter: float = 1e-4
) -> ClassGaussians:
    """The class Gaussians of a training split given as uint8 or [0, 1] float images [N, C, H,
    W]: converted to the model's internal [-1, 1] units here, so that training, evaluation and
    sampling all fit the same Gaussians from the same pixels."""
    from ebjdat.data import to_float01
    from ebjdat.models.jem import JEM

    return ClassGaussians().fit(JEM.to_internal(to_float01(images)), labels, num_classes, jitter)

"""CUDA checks, run by scripts/gpu_check.py on a machine with a GPU (`pytest -m cuda`); on this
project's GPU-less machines they skip with the reason conftest.py gives."""

from __future__ import annotations

import pytest
import torch
from helpers import gen, values

from ebjdat import ops
from ebjdat.ops.energy_head import reference as energy_reference
from ebjdat.ops.pgd_step import reference as pgd_reference
from ebjdat.ops.sgld_step import reference as sgld_reference

pytestmark = pytest.mark.cuda
BACKENDS = ["cuda", "triton"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _run(backend: str, fn, *args, **kwargs):  # noqa: ANN001, ANN202
    with ops.use_backend(backend):
        return fn(*args, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_deterministic_ops_match_the_float64_reference(backend: str, dtype: torch.dtype) -> None:
    x = values((33, 3, 7, 5), 0).abs()
    xa = (x + 0.05 * values(x.shape, 1)).clamp(0, 1)
    g = values(x.shape, 2)
    noise = values(x.shape, 3)
    cuda = [t.to("cuda", dtype) for t in (xa, g, x, noise)]
    tol = dict(rtol=TOL[dtype], atol=TOL[dtype])
    for norm in ("linf", "l2"):
        out = _run(backend, ops.pgd_step, *cuda[:3], step_size=0.1, eps=0.2, norm=norm)
        want = pgd_reference(*(t.double() for t in cuda[:3]), 0.1, 0.2, norm, 0.0, 1.0)
        torch.testing.assert_close(out.double().cpu(), want.cpu(), **tol)
    out = _run(
        backend,
        ops.sgld_step,
        cuda[0],
        cuda[1],
        step_size=0.3,
        grad_clip=0.5,
        noise_std=0.1,
        noise=cuda[3],
        clamp=None,
    )
    want = sgld_reference(
        cuda[0].double(), cuda[1].double(), 0.3, 0.5, 0.1, None, None, cuda[3].double(), None
    )
    torch.testing.assert_close(out.double().cpu(), want.cpu(), **tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_energy_head_forward_backward(backend: str) -> None:
    logits = (values((257, 100), 0) * 5).float().cuda().requires_grad_(True)
    y = torch.randint(0, 100, (257,), generator=gen(0)).cuda()
    out = _run(backend, ops.energy_head, logits, y, temperature=1.0)
    (out.energy.sum() + 0.5 * out.cond_energy.sum() - out.ce.sum()).backward()
    ref_logits = logits.detach().double().requires_grad_(True)
    ref = energy_reference(ref_logits, y, 1.0)
    (ref[0].sum() + 0.5 * ref[1].sum() - ref[2].sum()).backward()
    for got, want in zip(out, ref, strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits.grad.double(), ref_logits.grad, rtol=1e-5, atol=1e-6)


def test_cuda_and_triton_draw_the_same_noise() -> None:
    """Both take the same Philox counters from the CUDA generator's state."""
    z = torch.zeros(100_003, device="cuda")
    draws = []
    for backend in BACKENDS:
        g = torch.Generator("cuda").manual_seed(7)
        draws.append(
            _run(
                backend, ops.sgld_step, z, z, step_size=0.0, noise_std=1.0, clamp=None, generator=g
            )
        )
    torch.testing.assert_close(draws[0], draws[1], rtol=4e-6, atol=4e-6)
    assert abs(draws[0].mean().item()) < 0.02 and abs(draws[0].std().item() - 1) < 0.02


def test_noise_stays_fresh_under_cuda_graph_replay() -> None:
    """Graph-safe Philox state: each replay of a captured sgld_step draws new noise."""
    if ops.backend("sgld_step", "cuda") != "cuda":
        pytest.skip("the CUDA kernel is not built")
    x = torch.zeros(4096, device="cuda")
    out = torch.empty_like(x)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out.copy_(ops.sgld_step(x, x, step_size=0.0, noise_std=1.0, clamp=None))  # warm-up
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out.copy_(ops.sgld_step(x, x, step_size=0.0, noise_std=1.0, clamp=None))
    graph.replay()
    first = out.clone()
    graph.replay()
    assert not torch.equal(first, out)
    assert abs(out.std().item() - 1) < 0.05


def test_training_iteration_never_waits_for_the_gpu(tmp_path) -> None:  # noqa: ANN001
    """train_step queues its work without a host sync (divergence checks and metrics are read
    only at sync points, train/watch.py); torch raises on any synchronising call in the block."""
    from ebjdat.train import Trainer, config

    cfg = config.load_preset("digits")
    for assignment in (
        "train.eval_limit=0",
        "train.select_metric=val_acc",  # no robust validation runs
        "train.sample_grid=0",
        "data.batch_size=16",
        "data.labelled_batch_size=16",
        "sgld.steps=2",
        "adv.steps=2",
    ):
        config.override(cfg, assignment)
    trainer = Trainer(config=cfg.validate(), out_dir=tmp_path, device="cuda", progress_bar=False)
    x_pos, _ = next(iter(trainer.positives))
    x_lab, y = next(iter(trainer.labelled))
    trainer.train_step(x_pos, x_lab, y)  # warm-up: lazy initialisation may sync once
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer.train_step(x_pos, x_lab, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.watch.check()


def _graph_model(seed: int = 0):  # noqa: ANN202
    from ebjdat.models import build_model

    torch.manual_seed(seed)
    return build_model("wrn-10-2", num_classes=10, in_channels=3, image_size=16).cuda()


def test_graphed_sgld_equals_eager() -> None:
    """train.cuda_graphs: the captured SGLD loop gives the eager loop's samples, BN running
    statistics and generator state, on the first call (capture) and on later ones (replay)."""
    from ebjdat.sampling import sgld

    eager, graphed = _graph_model(), _graph_model()
    g_eager = torch.Generator("cuda").manual_seed(3)
    g_graph = torch.Generator("cuda").manual_seed(3)
    kw = dict(steps=4, step_size=1.0, noise_std=0.01, grad_clip=1.0, bn_train=True)
    for call in range(3):
        z0 = torch.rand(8, 3, 16, 16, device="cuda") * 2 - 1
        want = sgld(eager, z0, generator=g_eager, **kw)
        got = sgld(graphed, z0, generator=g_graph, cuda_graph=True, **kw)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"call {call}")
        for a, b in zip(graphed.buffers(), eager.buffers(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert torch.equal(g_graph.get_state(), g_eager.get_state())


def test_graphed_adversarial_sampler_equals_eager() -> None:
    from ebjdat.attacks import AdvConfig, adversarial_samples

    model = _graph_model()
    cfg = AdvConfig(objective="logit", perception_loss=True, project=True, steps=3)
    for call in range(2):
        z = torch.rand(8, 3, 16, 16, device="cuda") * 2 - 1
        y = torch.randint(0, 10, (8,), device="cuda")
        g1 = torch.Generator("cuda").manual_seed(call)
        g2 = torch.Generator("cuda").manual_seed(call)
        want = adversarial_samples(model, z, y, cfg, generator=g1)
        got = adversarial_samples(model, z, y, cfg, generator=g2, cuda_graph=True)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_training_step_with_cuda_graphs_keeps_the_loss(tmp_path) -> None:  # noqa: ANN001
    from ebjdat.train import Trainer, config

    losses = []
    for graphs in ("false", "true"):
        cfg = config.load_preset("digits")
        for assignment in (
            "train.eval_limit=0",
            "train.select_metric=val_acc",
            "train.sample_grid=0",
            "sgld.steps=3",
            "adv.steps=2",
            f"train.cuda_graphs={graphs}",
        ):
            config.override(cfg, assignment)
        trainer = Trainer(
            config=cfg.validate(), out_dir=tmp_path / graphs, device="cuda", progress_bar=False
        )
        x_pos, _ = next(iter(trainer.positives))
        x_lab, y = next(iter(trainer.labelled))
        losses.append([trainer.train_step(x_pos, x_lab, y).total.item() for _ in range(3)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)


def test_trainer_sets_cudnn_benchmark(tmp_path) -> None:  # noqa: ANN001
    from ebjdat.train import Trainer, config

    for flag in (False, True):
        cfg = config.load_preset("digits")
        config.override(cfg, f"train.cudnn_benchmark={str(flag).lower()}")
        Trainer(
            config=cfg.validate(), out_dir=tmp_path / str(flag), device="cuda", progress_bar=False
        )
        assert torch.backends.cudnn.benchmark is flag

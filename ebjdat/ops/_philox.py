"""Philox4x32-10 + Box-Muller in plain PyTorch: the reference for the noise every kernel draws.

Element i of a call takes lane i % 4 of the Philox block at counter offset + i // 4 (csrc/philox.h
describes the scheme; it is Triton's tl.randint4x/tl.randn4x with an int64 counter). Integer
arithmetic is done in int64 on 32-bit words, multiplying in 16-bit halves so nothing overflows.
"""

from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
UNIFORM_SCALE = 4.6566127342e-10
TWO_PI = 6.283185307179586
MIN_UNIFORM = 1.0e-7


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * m for 32-bit a (int64 tensor) and constant m."""
    lo_part = a * (m & 0xFFFF)
    hi_part = a * (m >> 16)
    total_low = lo_part + ((hi_part & 0xFFFF) << 16)
    return ((hi_part >> 16) + (total_low >> 32)) & M32, total_low & M32


def philox4x32_10(seed: int | torch.Tensor, counters: torch.Tensor) -> list[torch.Tensor]:
    """The four 32-bit words (as int64) of Philox4x32-10 at 64-bit `counters` under `seed`."""
    zeros = torch.zeros_like(counters)
    words = [counters & M32, (counters >> 32) & M32, zeros, zeros]
    return philox_rounds(words, (seed & M32, (seed >> 32) & M32))


def philox_rounds(words: list[torch.Tensor], key: tuple) -> list[torch.Tensor]:
    """Ten Philox4x32 rounds on a full 4-word counter (the Random123 definition)."""
    c0, c1, c2, c3 = words
    k0, k1 = key
    for _ in range(10):
        hi_b, lo_b = _mulhilo(c2, ROUND_B)
        hi_a, lo_a = _mulhilo(c0, ROUND_A)
        c0, c2 = hi_b ^ c1 ^ k0, hi_a ^ c3 ^ k1
        c1, c3 = lo_b, lo_a
        k0, k1 = (k0 + KEY_A) & M32, (k1 + KEY_B) & M32
    return [c0, c1, c2, c3]


def _to_uniform(w: torch.Tensor) -> torch.Tensor:
    x = torch.where(w >= 2**31, w - 2**32, w)  # the word as int32
    x = torch.where(x < 0, -x - 1, x)
    return x.to(torch.float32) * UNIFORM_SCALE


def _blocks(
    seed: int | torch.Tensor, offset: int, n: int, device: torch.device
) -> list[torch.Tensor]:
    counters = torch.arange((n + 3) // 4, dtype=torch.int64, device=device) + offset
    return philox4x32_10(seed, counters)


def uniforms(seed: int | torch.Tensor, offset: int, n: int, device: torch.device) -> torch.Tensor:
    """n float32 uniforms in [0, 1), element order."""
    u = [_to_uniform(w) for w in _blocks(seed, offset, n, device)]
    return torch.stack(u, dim=1).reshape(-1)[:n]


def normals(seed: int | torch.Tensor, offset: int, n: int, device: torch.device) -> torch.Tensor:
    """n float32 standard normals, element order (Box-Muller on lanes (0, 1) and (2, 3))."""
    u1, u2, u3, u4 = (_to_uniform(w) for w in _blocks(seed, offset, n, device))
    out = []
    for a, b in ((u1, u2), (u3, u4)):
        r = torch.sqrt(-2.0 * torch.log(torch.clamp_min(a, MIN_UNIFORM)))
        th = b * TWO_PI
        out += [r * torch.cos(th), r * torch.sin(th)]
    return torch.stack(out, dim=1).reshape(-1)[:n]


def blocks_for(n: int, extra: int = 0) -> int:
    """Philox counters a call over n elements consumes (plus `extra` whole blocks)."""
    return (n + 3) // 4 + extra


SEED_HIGH = 2**62  # seeds are drawn uniformly from [0, 2^62)


def seed_offset(
    generator: torch.Generator | None, device: torch.device, blocks: int
) -> tuple[int, int]:
    """(seed, first counter) for one call, drawn as the native kernels draw them.

    CPU: a fresh seed from the generator (the C++ kernel makes the same `randint` call), counters
    from 0. CUDA: the generator's Philox seed, counters from offset / 4, the offset advanced by 4
    per counter: PyTorch counts it in 32-bit outputs, as the CUDA kernels' philox_cuda_state does.
    """
    if device.type == "cuda":
        gen = generator
        if gen is None:
            index = device.index if device.index is not None else torch.cuda.current_device()
            gen = torch.cuda.default_generators[index]
        offset = gen.get_offset()
        gen.set_offset(offset + 4 * blocks)
        return gen.initial_seed(), offset // 4
    return int(reference_seed(generator, device)), 0


def reference_seed(generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """The seed as a 0-d tensor, so the reference traces under torch.compile. On CPU it is the
    CPU kernel's seed; on CUDA it comes from the CUDA generator, counters from 0."""
    return torch.randint(0, SEED_HIGH, (), generator=generator, device=device)

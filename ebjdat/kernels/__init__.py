"""Triton kernels of the ebjdat ops (installed as `ebjdat.kernels`). Each module holds the
kernel and a launcher taking tensors already validated by `ebjdat.ops`."""

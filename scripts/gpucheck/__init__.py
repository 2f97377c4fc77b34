"""scripts/gpu_check.py's modules (see its docstring for what the check does)."""

"""Triton kernels for Gemma 4, one file per op family (kernel, launcher, fp32 eager
reference, ``torch.library`` registration under the ``gemma4`` namespace)."""

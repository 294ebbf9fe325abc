"""``make gpu-check``: one prepared command that proves the GPU path on a machine with an NVIDIA
GPU (tests, the cross-check against the NumPy engine, autotuner, benchmark, service under load)
and writes one Markdown report; see ``python -m gpucheck --help`` and docs/GPU.md."""

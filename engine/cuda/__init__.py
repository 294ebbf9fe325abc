"""GPU-only machinery around the CuPy backend: CUDA graph capture and replay (``graphs``), cuBLAS
called directly where CuPy cannot (``cublas``), overlapped pinned-memory transfers
(``transfer``), GEMM precision (``precision``), device memory (``memory``) and the GPU part of
the benchmark (``bench``). Nothing here imports CuPy at import time.
"""

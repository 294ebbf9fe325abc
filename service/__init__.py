"""gemmserve's HTTP service: FastAPI routes, dynamic batching and metrics in front of the engine."""

__version__ = "0.1.0"
SERVER_NAME = "gemmserve"

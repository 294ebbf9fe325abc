"""Service settings: one ``Settings``, read from flags and ``GEMMSERVE_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from PIL import Image
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.repository import ModelEntry, discover, pick_default

MIB = 1024 * 1024


def _split_csv(value: object) -> object:
    """Accept ``"1,2,4"`` as well as a list (env vars and flags arrive as text)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service. Invalid values fail at start-up, never mid-request."""

    model_config = SettingsConfigDict(env_prefix="GEMMSERVE_", extra="forbid")

    # The contract of DESIGN.md: each also a `--flag`.
    model: Annotated[tuple[Path, ...], NoDecode] = Field(
        (),
        description="ONNX file, or a directory with model.onnx and model.json; may repeat",
    )
    model_repository: Path | None = Field(
        None, description="directory whose subdirectories with a model.onnx are models"
    )
    default_model: str | None = Field(
        None, description="the model /predict and /model answer for; default: first by name"
    )
    model_control: Literal["none", "explicit"] = Field(
        "none", description="explicit: POST /v2/repository/models/NAME/load|unload are enabled"
    )
    control_allow_remote: bool = Field(
        False, description="accept model load/unload from other hosts than loopback"
    )
    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: the GPU if present")
    batch_sizes: Annotated[tuple[int, ...], NoDecode] = Field(
        (1, 2, 4, 8, 16, 32),
        description="batch buckets the engine plans and tunes, comma-separated",
    )
    max_batch_size: int | None = Field(
        None, ge=1, le=4096, description="most images per engine batch; default: largest bucket"
    )
    max_delay_ms: float = Field(
        2.0, ge=0, le=10_000, description="under load, extra wait for a fuller batch"
    )
    max_queue: int = Field(1024, ge=1, le=1_000_000, description="images waiting; then 429")
    timeout_ms: float = Field(5000.0, gt=0, le=3_600_000, description="per-request deadline; 504")
    autotune_cache: Path | None = Field(None, description="autotune cache file (kept on restarts)")
    autotune_mode: Literal["off", "readonly", "tune-missing", "force"] = Field(
        "tune-missing", description="what the autotuner does at load"
    )
    allow_tf32: bool = Field(
        False, description="on a GPU, let the tuner offer TF32 GEMMs (faster, changes numerics)"
    )
    cuda_graphs: bool = Field(
        True, description="on a GPU, replay each batch bucket as a CUDA graph where it is faster"
    )
    cross_check: Literal["auto", "always"] = Field(
        "auto",
        description="before ready, compare each batch bucket with the NumPy engine and refuse "
        "to start on a mismatch; auto: on a GPU, always: on any device",
    )
    cpu_threading: Literal["engine", "blas"] = Field(
        "engine",
        description="on the CPU, engine: BLAS on one thread, the engine splits work per core "
        "(less CPU per request next to the HTTP threads); blas: BLAS threads each GEMM",
    )

    workers: int = Field(
        2, ge=1, le=256, description="HTTP worker processes (the engine runs in one more)"
    )
    target_p99_ms: float | None = Field(
        None,
        gt=0,
        le=3_600_000,
        description="refuse (429) at once a request the queue would answer later than this",
    )
    memory_limit_mib: int | None = Field(
        None,
        ge=1,
        description="total memory the models may use (their estimates summed); a model that "
        "would not fit, or would not fit in the device's free memory, fails to load (507)",
    )
    shm_mib_per_worker: int = Field(
        64, ge=1, le=65536, description="shared memory per worker for images in flight (/dev/shm)"
    )

    # Limits (RELIABILITY.md "Defaults to ship").
    max_body_bytes: int = Field(16 * MIB, ge=1024, description="request body limit; 413")
    max_image_pixels: int = Field(
        25_000_000, ge=1, le=89_000_000, description="pixel cap, below Pillow's bomb limit; 413"
    )
    allowed_formats: Annotated[tuple[str, ...], NoDecode] = Field(
        ("PNG", "JPEG", "WEBP", "GIF", "BMP"), description="image formats decoded; others 415"
    )
    max_images_per_request: int = Field(64, ge=1, le=4096, description="images in one request")
    multipart_max_files: int = Field(64, ge=1, description="file parts in one multipart body")
    multipart_max_fields: int = Field(16, ge=0, description="other parts in one multipart body")
    multipart_max_headers: int = Field(16, ge=1, description="header lines per multipart part")
    max_concurrency: int = Field(
        2048, ge=1, description="connections and tasks per HTTP worker; then 503"
    )
    keep_alive_s: float = Field(5.0, gt=0, description="idle keep-alive and request-head timeout")
    graceful_shutdown_s: float = Field(30.0, gt=0, description="drain time after SIGTERM")
    decode_threads: int = Field(4, ge=1, le=256, description="threads decoding request bodies")
    top_k: int = Field(5, ge=1, description="default number of predictions per image")
    retry_after_s: int = Field(1, ge=1, description="Retry-After on 429 and 503")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="log level"
    )

    @field_validator("batch_sizes", mode="before")
    @classmethod
    def _parse_batch_sizes(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("batch_sizes")
    @classmethod
    def _check_batch_sizes(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or min(value) < 1:
            raise ValueError(f"batch sizes must be positive integers, got {value}")
        return tuple(sorted(set(value)))

    @field_validator("allowed_formats", mode="before")
    @classmethod
    def _parse_formats(cls, value: object) -> object:
        value = _split_csv(value)
        if isinstance(value, list | tuple):
            return tuple(str(item).upper() for item in value)
        return value

    @field_validator("allowed_formats")
    @classmethod
    def _check_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        Image.init()
        unknown = [name for name in value if name not in Image.OPEN]
        if not value or unknown:
            raise ValueError(f"allowed_formats needs Pillow format names; unknown: {unknown}")
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _parse_models(cls, value: object) -> object:
        # One path from the environment or a caller; a list from repeated --model flags. An
        # empty value is none (a model repository alone, e.g. in a container built with one).
        if value == "":
            return ()
        return (value,) if isinstance(value, str | Path) else value

    @field_validator("model")
    @classmethod
    def _check_model(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        for path in value:
            if not path.exists():
                raise ValueError(f"model path {str(path)!r} does not exist")
        return value

    @model_validator(mode="after")
    def _check_models(self) -> Settings:
        entries = self.entries()  # a bad entry stops the service here, with its reason
        pick_default(entries, self.default_model)
        if self.cache_per_model and self.autotune_cache and self.autotune_cache.is_file():
            raise ValueError(
                f"autotune_cache {str(self.autotune_cache)!r} is a file; serving several "
                "models it names a directory (one cache file per model)"
            )
        return self

    @model_validator(mode="after")
    def _check_batching(self) -> Settings:
        if self.max_batch_size is None:
            self.max_batch_size = max(self.batch_sizes)
        if self.max_batch_size > max(self.batch_sizes):
            raise ValueError(
                f"max_batch_size {self.max_batch_size} exceeds the largest batch size "
                f"{max(self.batch_sizes)} in batch_sizes"
            )
        return self

    def entries(self) -> list[ModelEntry]:
        """The models to serve, sorted by name (``RepositoryError`` for a bad entry)."""
        return discover(self.model, self.model_repository)

    @property
    def default_model_name(self) -> str:
        """The model ``POST /predict`` and ``GET /model`` answer for."""
        return pick_default(self.entries(), self.default_model)

    @property
    def cache_per_model(self) -> bool:
        """Whether ``autotune_cache`` names a directory of per-model files (several models, a
        repository, or an existing directory) rather than one file (one ``--model``, as before)."""
        several = self.model_repository is not None or len(self.model) > 1
        return several or bool(self.autotune_cache and self.autotune_cache.is_dir())

    @property
    def effective_batch_sizes(self) -> tuple[int, ...]:
        """Buckets up to ``max_batch_size`` plus ``max_batch_size`` itself: nothing larger runs."""
        kept = [b for b in self.batch_sizes if b < self.max_batch_size]
        return (*kept, self.max_batch_size)

    def public(self) -> dict:
        """Settings safe to show on ``GET /model`` (paths as text)."""
        data = self.model_dump(mode="json")
        data["batch_sizes"] = list(self.effective_batch_sizes)
        if len(self.model) == 1:  # one --model reads as before: a path, not a list
            data["model"] = data["model"][0]
        return data

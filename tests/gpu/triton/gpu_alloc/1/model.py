"""GPU check, step "triton": a python-backend model that allocates GPU memory on its GPU instance.

Each request asks for BYTES of GPU memory held for HOLD_MS milliseconds. The model allocates them on the
instance's GPU, fills them with a byte pattern, reads the pattern back, holds the memory (so that
nvidia-smi sees it on the server's processes), frees it and answers ALLOCATED (the bytes), METHOD (how)
and DEVICE (the GPU's name). Any failure is the request's error.

It uses what the Triton python environment offers: torch or cupy when importable, else the CUDA driver
API (libcuda.so.1, installed with the driver) through ctypes, so the role's native runtime, whose
environment has numpy only, needs nothing more.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

PATTERN = 0xAB
TAIL = 16
MAX_BYTES = 8 << 30
MAX_HOLD_MS = 30_000


def log(message: str) -> None:
    """Write one line to the server's log (the stub's Logger where it has one)."""
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_info(f"gpu_alloc: {message}")
    else:
        print(f"gpu_alloc: {message}", flush=True)


class CudaDriver:
    """GPU memory through the CUDA driver API (libcuda.so.1 from the NVIDIA driver), with ctypes only."""

    name = "cuda-driver"

    def __init__(self, ordinal: int, library: str = "libcuda.so.1") -> None:
        """Load libcuda, initialise it and retain the primary context of GPU `ordinal`."""
        self.lib = ctypes.CDLL(library)
        self.call("cuInit", 0)
        device = ctypes.c_int()
        self.call("cuDeviceGet", ctypes.byref(device), ordinal)
        self.device = device
        name = ctypes.create_string_buffer(256)
        self.call("cuDeviceGetName", name, 256, device)
        self.device_name = name.value.decode(errors="replace")
        context = ctypes.c_void_p()
        self.call("cuDevicePrimaryCtxRetain", ctypes.byref(context), device)
        self.context = context

    def call(self, function: str, *args: Any) -> None:  # ctypes arguments of any kind
        """Call a driver function; raise RuntimeError naming it and the CUDA error on failure."""
        status = getattr(self.lib, function)(*args)
        if status != 0:
            text = ctypes.c_char_p()
            self.lib.cuGetErrorName(status, ctypes.byref(text))
            error = (text.value or b"unknown").decode(errors="replace")
            raise RuntimeError(f"{function} failed: CUDA error {status} ({error})")

    def hold(self, nbytes: int, seconds: float) -> int:
        """Allocate `nbytes`, fill and check them, hold them for `seconds`, free them; return the bytes."""
        self.call("cuCtxPushCurrent_v2", self.context)
        try:
            pointer = ctypes.c_uint64()
            self.call("cuMemAlloc_v2", ctypes.byref(pointer), ctypes.c_size_t(nbytes))
            try:
                self.call("cuMemsetD8_v2", pointer, ctypes.c_ubyte(PATTERN), ctypes.c_size_t(nbytes))
                self.call("cuCtxSynchronize")
                tail = (ctypes.c_ubyte * TAIL)()
                last = ctypes.c_uint64(pointer.value + nbytes - TAIL)
                self.call("cuMemcpyDtoH_v2", tail, last, ctypes.c_size_t(TAIL))
                check_pattern(bytes(tail))
                time.sleep(seconds)
            finally:
                self.call("cuMemFree_v2", pointer)
        finally:
            popped = ctypes.c_void_p()
            self.call("cuCtxPopCurrent_v2", ctypes.byref(popped))
        return nbytes

    def close(self) -> None:
        """Release the primary context."""
        release = "cuDevicePrimaryCtxRelease_v2" if hasattr(self.lib, "cuDevicePrimaryCtxRelease_v2") else None
        self.call(release or "cuDevicePrimaryCtxRelease", self.device)


class Torch:
    """GPU memory through torch, when the python environment has it with CUDA."""

    name = "torch"

    def __init__(self, ordinal: int) -> None:
        """Import torch and check that it sees GPU `ordinal`."""
        import torch  # optional: only where installed

        if not torch.cuda.is_available() or ordinal >= torch.cuda.device_count():
            raise RuntimeError(f"torch {torch.__version__} sees no CUDA device {ordinal}")
        self.torch = torch
        self.device = torch.device("cuda", ordinal)
        self.device_name = torch.cuda.get_device_name(ordinal)

    def hold(self, nbytes: int, seconds: float) -> int:
        """Allocate `nbytes`, fill and check them, hold them for `seconds`, free them; return the bytes."""
        torch = self.torch
        block = torch.full((nbytes,), PATTERN, dtype=torch.uint8, device=self.device)
        try:
            torch.cuda.synchronize(self.device)
            check_pattern(bytes(block[-TAIL:].cpu().tolist()))
            time.sleep(seconds)
        finally:
            del block
            torch.cuda.empty_cache()
        return nbytes

    def close(self) -> None:
        """Nothing to release."""


class Cupy:
    """GPU memory through cupy, when the python environment has it."""

    name = "cupy"

    def __init__(self, ordinal: int) -> None:
        """Import cupy and select GPU `ordinal`."""
        import cupy  # optional: only where installed

        self.cupy = cupy
        self.ordinal = ordinal
        self.device_name = cupy.cuda.runtime.getDeviceProperties(ordinal)["name"].decode(errors="replace")

    def hold(self, nbytes: int, seconds: float) -> int:
        """Allocate `nbytes`, fill and check them, hold them for `seconds`, free them; return the bytes."""
        cupy = self.cupy
        with cupy.cuda.Device(self.ordinal):
            block = cupy.full((nbytes,), PATTERN, dtype=cupy.uint8)
            try:
                cupy.cuda.Device(self.ordinal).synchronize()
                check_pattern(bytes(block[-TAIL:].get().tolist()))
                time.sleep(seconds)
            finally:
                del block
                cupy.get_default_memory_pool().free_all_blocks()
        return nbytes

    def close(self) -> None:
        """Nothing to release."""


ALLOCATORS = (Torch, Cupy, CudaDriver)


def check_pattern(tail: bytes) -> None:
    """Raise RuntimeError unless the bytes read back from the GPU are the pattern written."""
    if not tail or tail != bytes([PATTERN]) * len(tail):
        raise RuntimeError(f"GPU memory read back {tail.hex()}, expected {len(tail)} bytes of {PATTERN:#x}")


def first_allocator(ordinal: int, candidates: tuple[type, ...] = ALLOCATORS) -> Any:
    """The first allocator that works on GPU `ordinal`; RuntimeError listing why each one did not."""
    reasons = []
    for candidate in candidates:
        try:
            allocator = candidate(ordinal)
        except (ImportError, OSError, RuntimeError, AttributeError) as err:
            reasons.append(f"{candidate.name}: {err}")
            continue
        if reasons:
            log(f"using {candidate.name} ({'; '.join(reasons)})")
        return allocator
    raise RuntimeError("no way to allocate GPU memory: " + "; ".join(reasons))


def request_values(nbytes: int, hold_ms: int) -> tuple[int, float]:
    """Validate a request's BYTES and HOLD_MS; return bytes and seconds."""
    if not TAIL <= nbytes <= MAX_BYTES:
        raise ValueError(f"BYTES {nbytes} is outside {TAIL}..{MAX_BYTES}")
    if not 0 <= hold_ms <= MAX_HOLD_MS:
        raise ValueError(f"HOLD_MS {hold_ms} is outside 0..{MAX_HOLD_MS}")
    return nbytes, hold_ms / 1000.0


class TritonPythonModel:
    """The gpu_alloc model: one allocator on the instance's GPU, one allocation per request."""

    def initialize(self, args: dict[str, str]) -> None:
        """Pick the allocator on the GPU Triton gave this instance (KIND_GPU: model_instance_device_id)."""
        kind = args.get("model_instance_kind", "")
        if kind != "GPU":
            raise RuntimeError(f"gpu_alloc must run on a GPU instance (KIND_GPU), got kind {kind!r}")
        self.ordinal = int(args.get("model_instance_device_id", "0"))
        self.allocator = first_allocator(self.ordinal)
        log(f"GPU {self.ordinal} ({self.allocator.device_name}) through {self.allocator.name}")

    def execute(self, requests: list[Any]) -> list[Any]:
        """Allocate, check, hold and free GPU memory for each request; answer what was allocated."""
        responses = []
        for request in requests:
            try:
                nbytes, seconds = request_values(
                    int(pb_utils.get_input_tensor_by_name(request, "BYTES").as_numpy().reshape(-1)[0]),
                    int(pb_utils.get_input_tensor_by_name(request, "HOLD_MS").as_numpy().reshape(-1)[0]),
                )
                allocated = self.allocator.hold(nbytes, seconds)
            except (ValueError, RuntimeError) as err:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(err))))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("ALLOCATED", np.array([allocated], dtype=np.int64)),
                        pb_utils.Tensor("METHOD", np.array([self.allocator.name.encode()], dtype=np.object_)),
                        pb_utils.Tensor("DEVICE", np.array([self.allocator.device_name.encode()], dtype=np.object_)),
                    ]
                )
            )
        return responses

    def finalize(self) -> None:
        """Release the allocator."""
        allocator = getattr(self, "allocator", None)
        if allocator is not None:
            allocator.close()

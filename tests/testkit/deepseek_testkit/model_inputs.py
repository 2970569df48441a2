"""The request tensors of the served model's interface (TensorRT-LLM llmapi, which the lab model copies).

One place for the inputs every client builds: the lab, the benchmarks and the molecule tests of the
triton_server and mtls_proxy roles. ``module`` is tritonclient.http or tritonclient.grpc.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np


def generate_inputs(module: ModuleType, prompt: str, max_tokens: int, streaming: bool = False) -> list:
    """text_input and sampling_param_max_tokens, plus streaming when a token-by-token answer is wanted."""
    text = module.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    tokens = module.InferInput("sampling_param_max_tokens", [1], "INT32")
    tokens.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    if not streaming:
        return [text, tokens]
    stream = module.InferInput("streaming", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True]))
    return [text, tokens, stream]

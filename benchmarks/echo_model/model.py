"""bench_echo: the cheapest model Triton can serve (python backend), returning its input unchanged.

The mTLS proxy benchmark loads it next to the lab model through Triton's repository API, so that the
proxy's own cost is measured against a model that costs almost nothing (the proxy's worst case).
"""

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Echo INPUT as OUTPUT for every request of a batch."""

    def execute(self, requests: list) -> list:
        """One response per request, carrying the request's INPUT tensor back as OUTPUT."""
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", data)]))
        return responses

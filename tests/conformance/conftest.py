"""The llmapi conformance suite: a served model checked against TensorRT-LLM's llmapi contract.

The target comes from the environment (tests/conformance/README.md):

    CONFORMANCE_HTTP_URL      http://node:8000, or https://proxy:8443 through the mutual-TLS proxy
    CONFORMANCE_GRPC_URL      node:8001, or proxy:8443 (TLS when CONFORMANCE_CA is set)
    CONFORMANCE_MODEL         the served model's name (default deepseek)
    CONFORMANCE_CA, CONFORMANCE_CERT, CONFORMANCE_KEY   CA bundle, client certificate and key (optional)
    CONFORMANCE_DECOUPLED     1 or 0; default: what the served model's configuration says
    CONFORMANCE_LONG_MAX_TOKENS   max_tokens of the request the cancellation test stops (default 1024)

Without CONFORMANCE_HTTP_URL and CONFORMANCE_GRPC_URL every test is skipped. This directory is outside
tests/unit and tests/integration, so ``make unit`` never collects it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from llmapi_client import Target

ROOT = Path(__file__).resolve().parents[2]


def load_record() -> ModuleType:
    """plugins/module_utils/llmapi_interface.py, the recorded contract (loaded by path: no Ansible needed)."""
    path = ROOT / "plugins" / "module_utils" / "llmapi_interface.py"
    spec = importlib.util.spec_from_file_location("llmapi_interface", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def target() -> Target:
    found = Target.from_environment()
    if not (found.http_url or found.grpc_url):
        pytest.skip("no target: set CONFORMANCE_HTTP_URL and/or CONFORMANCE_GRPC_URL (tests/conformance/README.md)")
    return found


@pytest.fixture(scope="session")
def record() -> ModuleType:
    return load_record()


@pytest.fixture(scope="session")
def served_config(target: Target) -> dict:
    """The served model's configuration, or an empty mapping where the endpoint does not give it."""
    try:
        return target.model_config()
    except Exception as exc:  # noqa: BLE001 (reported by the test that needs it; the others go on)
        return {"_unreachable": str(exc)}


@pytest.fixture(scope="session")
def decoupled(target: Target, served_config: dict) -> bool:
    """Whether the model is decoupled: CONFORMANCE_DECOUPLED, else its configuration, else true (production)."""
    if target.decoupled is not None:
        return target.decoupled
    policy = served_config.get("model_transaction_policy", {})
    return bool(policy.get("decoupled", "_unreachable" in served_config))


@pytest.fixture
def grpc_target(target: Target) -> Target:
    if not target.grpc_url:
        pytest.skip("needs CONFORMANCE_GRPC_URL (streams and cancellation are gRPC)")
    return target

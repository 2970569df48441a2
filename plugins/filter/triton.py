# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters for Triton Inference Server model repositories.

triton_pbtxt turns a ModelConfig described as data into config.pbtxt text (module_utils/triton_config);
triton_llmapi_model_yaml gives the llmapi layout's model.yaml for DeepSeek-V3/R1, triton_llmapi_image_config
its config.pbtxt text derived from the image's own llmapi config.pbtxt, and triton_llmapi_config the same as
data from the recorded interface when no image file is at hand (module_utils/triton_layouts);
triton_llmapi_tensors gives the llmapi model's recorded
tensors (module_utils/llmapi_interface); triton_manifest, triton_manifest_dirs and
triton_stale_versions read artifact manifests and pick old versions to remove (module_utils/triton_artifacts);
triton_launch_argv and triton_plan_role render the container launch from the placement plan (triton_launch);
triton_engine_placeholders and triton_engine_config fill the engine layout's templates (triton_engine).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.deepseek.cluster.plugins.module_utils.llmapi_interface import tensors
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_artifacts import (
    ArtifactError,
    manifest_dirs,
    mismatched,
    parse_manifest,
    versions_to_remove,
)
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_config import to_pbtxt
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_engine import (
    EngineError,
    engine_placeholders,
    fill_template,
)
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_launch import (
    LaunchError,
    launch_argv,
    plan_instance,
    role_of,
)
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_layouts import (
    LayoutError,
    llmapi_config,
    llmapi_image_config,
    llmapi_model_yaml,
)


def triton_pbtxt(config: dict[str, Any]) -> str:
    """config.pbtxt text of ``config``; a configuration without a name is an error."""
    try:
        return to_pbtxt(config)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def triton_llmapi_model_yaml(
    plan_request: dict[str, Any], options: dict[str, Any], decoupled: bool = True
) -> dict[str, Any]:
    """model.yaml content of the llmapi layout; a bad combination fails naming the variable."""
    try:
        return llmapi_model_yaml(plan_request, options, decoupled)
    except LayoutError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def _bool(value: Any, what: str) -> bool:
    try:
        return boolean(value, strict=True)
    except TypeError as exc:
        raise AnsibleFilterError(f"{what} must be true or false, got {value!r}") from exc


def triton_llmapi_config(name: str, decoupled: bool = True) -> dict[str, Any]:
    """config.pbtxt data of the llmapi model served as ``name``, from the recorded interface (no image file)."""
    try:
        return llmapi_config(name, _bool(decoupled, "decoupled"))
    except LayoutError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def triton_llmapi_image_config(
    image_text: str,
    name: str,
    decoupled: bool,
    version_policy: dict[str, Any],
    parameters: dict[str, Any] | None = None,
) -> str:
    """config.pbtxt text for the llmapi model ``name``, derived from the image's llmapi/tensorrt_llm/config.pbtxt.

    The image's file is parsed; name, ``max_batch_size: 0``, the decoupled transaction policy, ``version_policy``
    and ``parameters`` (strings, on top of the image's) are set; its inputs and outputs are kept, checked
    (text_input, text_output, unique names) and completed with any output one of its inputs asks for
    (module_utils/triton_layouts.derive_llmapi_config). Validated against Triton's ModelConfig protobuf when
    tritonclient is installed on the controller.
    """
    try:
        return llmapi_image_config(image_text, name, _bool(decoupled, "decoupled"), version_policy, parameters)
    except LayoutError as exc:
        raise AnsibleFilterError(f"triton_llmapi_image_config: {exc}") from exc


def triton_llmapi_tensors(kind: str) -> list[dict[str, Any]]:
    """The llmapi model's recorded ``input`` or ``output`` tensors as config.pbtxt data (llmapi_interface)."""
    try:
        return tensors(kind)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def triton_manifest(text: str) -> list[dict[str, str]]:
    """Files of a sha256 manifest (``sha256sum`` output); an unsafe or malformed line fails naming it."""
    try:
        return parse_manifest(text)
    except ArtifactError as exc:
        raise AnsibleFilterError(f"triton_server_artifact_manifest: {exc}") from exc


def triton_manifest_dirs(files: list[dict[str, str]]) -> list[str]:
    """Subdirectories the manifest's files need, parents first."""
    return manifest_dirs(files)


def triton_mismatched(stat_results: list[dict[str, Any]]) -> list[str]:
    """Manifest paths whose staged file is missing or has another sha256 (looped stat results)."""
    return mismatched(stat_results)


def triton_stale_versions(names: list[str], current: int, keep: int) -> list[str]:
    """Version directory names beyond the newest ``keep`` (never ``current``)."""
    try:
        return versions_to_remove([str(n) for n in names], int(current), int(keep))
    except ArtifactError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def triton_launch_argv(launch: dict[str, Any]) -> list[str]:
    """``docker run``/``podman run`` argv of this host's share of its plan instance (triton_launch)."""
    try:
        return launch_argv(launch)
    except (LaunchError, KeyError) as exc:
        raise AnsibleFilterError(f"triton_server container launch: {exc}") from exc


def triton_plan_role(plan: dict[str, Any], host: str, number: int = -1) -> dict[str, Any]:
    """The host's place in its plan instance: instance, role (single/launcher/worker), launcher, workers, part."""
    try:
        instance = plan_instance(plan, host, int(number))
        role = role_of(instance, host)
    except LaunchError as exc:
        raise AnsibleFilterError(str(exc)) from exc
    part = next(p for p in instance["parts"] if p["host"] == host)
    return {
        "instance": instance["instance"],
        "role": role,
        "world_size": instance["world_size"],
        "launcher": instance["hosts"][0],
        "workers": instance["hosts"][1:],
        "ranks": [r["rank"] for r in instance.get("ranks", []) if r["host"] == host],
        "part": part,
    }


def triton_engine_placeholders(
    options: dict[str, Any], part: dict[str, Any], world_size: int, decoupled: bool = True
) -> dict[str, dict[str, str]]:
    """Engine layout: model directory -> placeholder values for this host's part of the plan (triton_engine)."""
    try:
        return engine_placeholders(options, part, int(world_size), bool(decoupled))
    except EngineError as exc:
        raise AnsibleFilterError(str(exc)) from exc


_NAME = re.compile(r'^name:\s*"[^"]*"', re.MULTILINE)


def triton_engine_config(text: str, values: dict[str, str], name: str = "", version: int = 0) -> str:
    """An upstream config.pbtxt template filled with ``values``.

    ``name`` renames the model (the ensemble is served under the role's model name); ``version`` pins the
    served version (``version_policy specific``).
    """
    filled = fill_template(text, values)
    if name:
        if not _NAME.search(filled):
            raise AnsibleFilterError("the template has no top-level name field to replace")
        filled = _NAME.sub(f'name: "{name}"', filled, count=1)
    if version:
        filled = filled.rstrip("\n") + f"\nversion_policy: {{ specific: {{ versions: [{int(version)}] }} }}\n"
    return filled


class FilterModule:
    """Triton filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {
            "triton_pbtxt": triton_pbtxt,
            "triton_llmapi_model_yaml": triton_llmapi_model_yaml,
            "triton_llmapi_config": triton_llmapi_config,
            "triton_llmapi_image_config": triton_llmapi_image_config,
            "triton_llmapi_tensors": triton_llmapi_tensors,
            "triton_manifest": triton_manifest,
            "triton_manifest_dirs": triton_manifest_dirs,
            "triton_stale_versions": triton_stale_versions,
            "triton_mismatched": triton_mismatched,
            "triton_launch_argv": triton_launch_argv,
            "triton_plan_role": triton_plan_role,
            "triton_engine_placeholders": triton_engine_placeholders,
            "triton_engine_config": triton_engine_config,
        }

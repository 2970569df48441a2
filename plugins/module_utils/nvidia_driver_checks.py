# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Decisions of the nvidia_driver role after the install, as pure functions.

Whether to reboot (and whether it may be automatic), the Secure Boot key's enrollment state, the
NVSwitch fabric state that ``nvidia-smi -q`` reports, which installed kernels lack an nvidia module,
and why no module is loaded. The role runs the commands; these read their outputs, so each decision
is unit-tested on outputs no test machine can produce.
"""

from __future__ import annotations

import re
from typing import Any

# mokutil --test-key (rhboot/mokutil src/mokutil.c, test_key and print_skip_message): exit 0 with
# "... is not enrolled"; exit 1 with "... is already enrolled", "... is already in db", "... is already
# in the built-in trusted keyring" (the firmware or kernel trusts it: as good as enrolled), "... is
# already in the enrollment request", or "... is blocked in dbx"/"MokListXRT" (it will never be
# trusted). The text decides, not the exit code.
MOK_TRUSTED = ("is already enrolled", "is already in db", "already in the built-in trusted keyring")
MOK_REQUESTED = "already in the enrollment request"
MOK_BLOCKED = "is blocked"


def mok_state(rc: int, output: str) -> str:
    """``enrolled``, ``requested`` (waits for the MOK manager at the next boot), ``blocked`` or ``absent``."""
    text = str(output)
    if MOK_BLOCKED in text:
        return "blocked"
    if any(marker in text for marker in MOK_TRUSTED):
        return "enrolled"
    if MOK_REQUESTED in text:
        return "requested"
    return "absent"


def persistenced_command(unit: str) -> str:
    """The packaged nvidia-persistenced command with persistence mode on, or "" when it is on already.

    ``unit`` is the packaged unit file (its FragmentPath, not the drop-ins). Ubuntu's unit passes
    ``--no-persistence-mode``; Debian's (``--user nvpd``) and NVIDIA's RHEL unit (``--verbose``, no user)
    do not, and then nothing needs overriding. The packaged command is kept as it is (its user, which
    may not exist under another name) with only that flag replaced.
    """
    commands = [line.split("=", 1)[1].strip() for line in str(unit).splitlines() if line.startswith("ExecStart=")]
    command = next((c for c in reversed(commands) if c), "")
    if "--no-persistence-mode" not in command.split():
        return ""
    return " ".join("--persistence-mode" if w == "--no-persistence-mode" else w for w in command.split())


def reboot_plan(
    host: dict[str, Any],
    installed_version: str,
    mok: str,
    setting: str,
    local: bool,
) -> dict[str, Any]:
    """Whether the new module needs a reboot, and whether the role may do it itself.

    A reboot is needed when another nvidia module is loaded, when nouveau holds the GPUs, or when a
    Secure Boot key waits for enrollment. A key enrollment is confirmed by a person at the firmware's
    MOK manager, which gives up after 10 seconds: the role never reboots into it, whatever
    ``nvidia_driver_reboot`` says; the operator reboots at a console (or BMC) and confirms.
    """
    module = host.get("kernel_module") or {}
    reasons = []
    if host.get("nouveau_loaded"):
        reasons.append("nouveau holds the GPUs")
    if module.get("loaded") and installed_version and module.get("version") != installed_version:
        reasons.append(f"module {module.get('version')} is loaded, {installed_version} is installed")
    if mok == "requested":
        reasons.append("the Secure Boot key waits for enrollment at the MOK manager")
    needed = bool(reasons)
    why_not = ""
    if needed and mok == "requested":
        why_not = (
            "the MOK manager asks for the enrollment password at the console and gives up after 10 seconds: "
            "reboot from a console or the BMC and confirm the key"
        )
    elif needed and local:
        why_not = "this is the controller itself"
    elif needed and setting != "auto":
        why_not = "nvidia_driver_reboot=defer"
    return {"needed": needed, "auto": needed and not why_not, "reasons": reasons, "why_not_auto": why_not}


def fabric_states(text: str) -> list[dict[str, str]]:
    """Per GPU, the Fabric section of ``nvidia-smi -q``: [{"gpu": "00000000:18:00.0", "state", "status"}].

    The section reads (NVML nvmlGpuFabricInfo): ``Fabric`` then indented ``State : Completed``
    (Not Supported, Not Started, In Progress, Completed) and ``Status : Success`` (or an error).
    """
    states: list[dict[str, str]] = []
    gpu = ""
    in_fabric = False
    fabric_indent = 0
    for line in str(text).splitlines():
        head = re.match(r"^GPU\s+([0-9A-Fa-f:.]+)\s*$", line)
        if head:
            gpu, in_fabric = head.group(1), False
            continue
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped == "Fabric":
            in_fabric, fabric_indent = True, indent
            states.append({"gpu": gpu, "state": "", "status": ""})
            continue
        if in_fabric and stripped and indent <= fabric_indent:
            in_fabric = False
        if in_fabric:
            field = re.match(r"^(State|Status)\s*:\s*(.*)$", stripped)
            if field:
                states[-1][field.group(1).lower()] = field.group(2).strip()
    return states


def fabric_problems(states: list[dict[str, str]]) -> list[str]:
    """GPUs whose fabric did not come up (state Completed with status Success is up)."""
    if not states:
        return ["nvidia-smi -q shows no Fabric section (a driver older than R550, or no GPU answered)"]
    return [
        f"GPU {s['gpu']}: fabric state '{s['state'] or 'missing'}', status '{s['status'] or 'missing'}'"
        for s in states
        if s["state"] != "Completed" or s["status"] != "Success"
    ]


def version_key(release: str) -> tuple[Any, ...]:
    """Sort key of a kernel release ("6.1.0-28-amd64" after "6.1.0-9-amd64")."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"[.\-+~]", str(release)))


def kernels_to_check(kernels: list[str], running: str) -> list[str]:
    """The kernels that must carry the nvidia module: the running one and the newest installed one.

    The newest is the next boot's default: a kernel update whose DKMS build failed shows here, before
    the reboot.
    """
    wanted = {running} if running else set()
    if kernels:
        wanted.add(max(kernels, key=version_key))
    return sorted(wanted, key=version_key)


def modules_missing(results: list[dict[str, Any]], version: str) -> list[str]:
    """Kernels whose nvidia module is missing or of another version.

    ``results``: ``modinfo -k KERNEL -F version nvidia`` per kernel (``item`` the kernel, ``rc``, ``stdout``).
    """
    missing = []
    for result in results:
        found = str(result.get("stdout", "")).strip()
        if result.get("rc", 1) != 0 or not found:
            missing.append(f"{result.get('item')}: no nvidia module")
        elif version and found != version:
            missing.append(f"{result.get('item')}: nvidia module {found}, driver {version}")
    return missing


def no_module_reasons(host: dict[str, Any], mok: str, dkms_status: str) -> list[str]:
    """Likely reasons why no nvidia module is loaded on a GPU host, most specific first."""
    reasons = []
    if host.get("nouveau_loaded"):
        reasons.append("nouveau is loaded and holds the GPUs (blacklist it and rebuild the initramfs)")
    if host.get("secure_boot") == "enabled" and mok != "enrolled":
        reasons.append(
            "Secure Boot is on: the module loads only if signed by a key the firmware trusts (a DKMS build "
            "needs an enrolled MOK, nvidia_driver_secure_boot=sign; Ubuntu's precompiled modules are signed by "
            "Canonical where linux-signatures-nvidia exists for the kernel)"
        )
    if dkms_status and not re.search(r"nvidia\S*[/,].*installed", dkms_status):
        reasons.append(f"DKMS has not installed the module: {dkms_status.strip()}")
    return reasons or ["the module did not load: see 'modprobe nvidia' and the kernel log (dmesg)"]

"""Decisions of the nvidia_driver role after the install (module_utils/nvidia_driver_checks).

The fabric tests read a real ``nvidia-smi -a`` capture of one H100 (driver 560.35.03, Fabric Completed /
Success; tests/fixtures/nvidia-facts/nvidia-smi-q-h100-fabric.txt, research §4) and copies of it edited
here. The mokutil messages are the format strings of rhboot/mokutil src/mokutil.c (research §8).
"""

from pathlib import Path

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_driver_checks import (
    fabric_problems,
    fabric_states,
    kernels_to_check,
    modules_missing,
    mok_state,
    no_module_reasons,
    reboot_plan,
)

FACTS = Path(__file__).resolve().parents[2] / "fixtures" / "nvidia-facts"
H100 = (FACTS / "nvidia-smi-q-h100-fabric.txt").read_text()
STATE_LINE = "        State                             : Completed\n"
STATUS_LINE = "        Status                            : Success\n"


def test_the_capture_has_the_fabric_lines_the_edits_replace():
    assert H100.count(STATE_LINE) == 1
    assert H100.count(STATUS_LINE) == 1
    assert H100.count("    Fabric\n") == 1


# --- fabric -----------------------------------------------------------------------------------------


def test_real_h100_capture_fabric_completed_success():
    states = fabric_states(H100)
    assert states == [{"gpu": "00000000:DB:00.0", "state": "Completed", "status": "Success"}]
    assert fabric_problems(states) == []


@pytest.mark.parametrize("state", ["In Progress", "Not Started", "Not Supported"])
def test_fabric_not_up_is_a_problem(state):
    # research §4: NVML states Not Supported / Not Started / In Progress / Completed.
    text = H100.replace(STATE_LINE, STATE_LINE.replace("Completed", state))
    states = fabric_states(text)
    assert states[0]["state"] == state
    assert fabric_problems(states) == [f"GPU 00000000:DB:00.0: fabric state '{state}', status 'Success'"]


def test_fabric_completed_with_an_error_status_is_a_problem():
    # research §4: Azure/azhpc-images PR #506 shows "State : Completed / Status : Insufficient Resources".
    text = H100.replace(STATUS_LINE, STATUS_LINE.replace("Success", "Insufficient Resources"))
    assert fabric_problems(fabric_states(text)) == [
        "GPU 00000000:DB:00.0: fabric state 'Completed', status 'Insufficient Resources'"
    ]


def test_missing_fabric_section():
    start = H100.index("    Fabric\n")
    end = H100.index("    Processes")
    text = H100[:start] + H100[end:]
    assert "Fabric" not in text
    assert fabric_states(text) == []
    assert fabric_problems([]) == [
        "nvidia-smi -q shows no Fabric section (a driver older than R550, or no GPU answered)"
    ]


def test_missing_state_line_inside_the_section():
    states = fabric_states(H100.replace(STATE_LINE, ""))
    assert states == [{"gpu": "00000000:DB:00.0", "state": "", "status": "Success"}]
    assert fabric_problems(states) == ["GPU 00000000:DB:00.0: fabric state 'missing', status 'Success'"]


def test_fields_outside_the_fabric_section_are_not_read():
    # MIG Mode, Driver Model ... have "Current"/"Pending"; nothing but the Fabric section's State/Status counts.
    text = H100.replace("    Processes                             : None\n", "    Processes\n        State : Bogus\n")
    assert fabric_states(text)[0]["state"] == "Completed"


def test_eight_gpus_one_still_in_progress():
    head, gpu = H100.split("GPU 00000000:DB:00.0\n", 1)
    blocks = []
    for i, bus in enumerate(["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]):
        block = f"GPU 00000000:{bus}:00.0\n" + gpu
        if i == 5:
            block = block.replace(STATE_LINE, STATE_LINE.replace("Completed", "In Progress"))
        blocks.append(block)
    states = fabric_states(head + "".join(blocks))
    assert [s["gpu"] for s in states] == [
        f"00000000:{b}:00.0" for b in ["18", "2A", "3A", "5D", "9A", "AB", "BA", "DB"]
    ]
    assert fabric_problems(states) == ["GPU 00000000:AB:00.0: fabric state 'In Progress', status 'Success'"]


def test_a_535_style_section_without_clique_fields():
    # research §4: the 535 layout has only State and Status under Fabric.
    text = "GPU 00000000:18:00.0\n    Fabric\n        State                             : Completed\n" + (
        "        Status                            : Success\n    Processes                             : None\n"
    )
    assert fabric_problems(fabric_states(text)) == []


# --- mokutil --test-key ----------------------------------------------------------------------------

KEY = "/var/lib/dkms/mok.pub"


@pytest.mark.parametrize(
    ("rc", "output", "state"),
    [
        # src/mokutil.c test_key(): "%s is not enrolled\n", ret 0.
        (0, f"{KEY} is not enrolled\n", "absent"),
        # print_skip_message(): "%s is already enrolled\n" (MokListRT), exit 1.
        (1, f"{KEY} is already enrolled\n", "enrolled"),
        # "%s is already in the enrollment request\n" (MokNew: waits for the MOK manager), exit 1.
        (1, f"{KEY} is already in the enrollment request\n", "requested"),
        # The text decides, not the exit code: exit 1 is also "EFI variables are not supported on this system".
        (1, "EFI variables are not supported on this system\n", "absent"),
        (255, f"Failed to open {KEY}\n", "absent"),
    ],
)
def test_mok_state_from_the_exact_mokutil_messages(rc, output, state):
    assert mok_state(rc, output) == state


# --- reboot -------------------------------------------------------------------------------------------

OLD_MODULE = {"kernel_module": {"loaded": True, "version": "580.95.05", "flavor": "open"}, "nouveau_loaded": False}
NO_MODULE = {"kernel_module": {"loaded": False, "version": "", "flavor": ""}, "nouveau_loaded": False}
NOUVEAU = {"kernel_module": {"loaded": False, "version": "", "flavor": ""}, "nouveau_loaded": True}


def test_older_module_loaded_reboots_automatically():
    plan = reboot_plan(OLD_MODULE, "580.105.08", "enrolled", "auto", False)
    assert plan == {
        "needed": True,
        "auto": True,
        "reasons": ["module 580.95.05 is loaded, 580.105.08 is installed"],
        "why_not_auto": "",
    }


def test_a_requested_mok_is_never_rebooted_into_even_with_reboot_auto():
    plan = reboot_plan(NO_MODULE, "580.105.08", "requested", "auto", False)
    assert plan["needed"]
    assert not plan["auto"]
    assert plan["reasons"] == ["the Secure Boot key waits for enrollment at the MOK manager"]
    assert "console" in plan["why_not_auto"]
    assert "10 seconds" in plan["why_not_auto"]
    assert "MOK manager" in plan["why_not_auto"]
    # The MOK reason wins over the others.
    both = reboot_plan(OLD_MODULE, "580.105.08", "requested", "auto", True)
    assert both["why_not_auto"] == plan["why_not_auto"]
    assert len(both["reasons"]) == 2


def test_the_controller_is_never_rebooted():
    plan = reboot_plan(OLD_MODULE, "580.105.08", "enrolled", "auto", True)
    assert plan["needed"]
    assert not plan["auto"]
    assert plan["why_not_auto"] == "this is the controller itself"


def test_defer_only_reports():
    plan = reboot_plan(OLD_MODULE, "580.105.08", "absent", "defer", False)
    assert plan["needed"]
    assert not plan["auto"]
    assert plan["why_not_auto"] == "nvidia_driver_reboot=defer"


def test_nouveau_holding_the_gpus_needs_a_reboot():
    plan = reboot_plan(NOUVEAU, "580.105.08", "absent", "auto", False)
    assert plan["needed"]
    assert plan["auto"]
    assert plan["reasons"] == ["nouveau holds the GPUs"]


@pytest.mark.parametrize(
    ("host", "installed"),
    [
        (NO_MODULE, "580.105.08"),  # nothing holds the GPUs: modprobe, no reboot
        (OLD_MODULE, "580.95.05"),  # the loaded module is the installed one
        (OLD_MODULE, ""),  # nothing installed (check mode before the install)
        ({}, "580.95.05"),
    ],
)
def test_no_reboot_needed(host, installed):
    plan = reboot_plan(host, installed, "enrolled", "auto", False)
    assert plan == {"needed": False, "auto": False, "reasons": [], "why_not_auto": ""}


# --- kernels and their modules ---------------------------------------------------------------------


def test_kernels_to_check_picks_running_and_newest():
    kernels = ["6.1.0-9-amd64", "6.1.0-28-amd64", "6.1.0-18-amd64"]
    # 6.1.0-28 is newer than 6.1.0-9: numbers, not text ("9" > "28" as text).
    assert kernels_to_check(kernels, "6.1.0-9-amd64") == ["6.1.0-9-amd64", "6.1.0-28-amd64"]
    assert kernels_to_check(kernels, "6.1.0-28-amd64") == ["6.1.0-28-amd64"]
    assert kernels_to_check([], "6.8.0-49-generic") == ["6.8.0-49-generic"]
    assert kernels_to_check(["5.15.0-130-generic", "6.8.0-52-generic"], "5.15.0-130-generic") == [
        "5.15.0-130-generic",
        "6.8.0-52-generic",
    ]
    rhel = ["5.14.0-427.13.1.el9_4.x86_64", "5.14.0-503.11.1.el9_5.x86_64", "5.14.0-427.42.1.el9_4.x86_64"]
    assert kernels_to_check(rhel, rhel[0]) == [rhel[0], "5.14.0-503.11.1.el9_5.x86_64"]


def test_modules_missing():
    results = [
        {"item": "6.1.0-28-amd64", "rc": 0, "stdout": "580.95.05\n"},
        {"item": "6.1.0-29-amd64", "rc": 1, "stdout": "", "stderr": "modinfo: ERROR: Module nvidia not found."},
        {"item": "6.1.0-30-amd64", "rc": 0, "stdout": "580.82.07"},
        {"item": "6.1.0-31-amd64", "rc": 0, "stdout": ""},
        # The exit status decides too: a failed modinfo is no module, whatever it printed.
        {"item": "6.1.0-32-amd64", "rc": 1, "stdout": "580.95.05"},
    ]
    assert modules_missing(results, "580.95.05") == [
        "6.1.0-29-amd64: no nvidia module",
        "6.1.0-30-amd64: nvidia module 580.82.07, driver 580.95.05",
        "6.1.0-31-amd64: no nvidia module",
        "6.1.0-32-amd64: no nvidia module",
    ]
    # No installed version known: only the absence counts.
    assert modules_missing(results[2:3], "") == []


def test_no_module_reasons():
    clean = {"nouveau_loaded": False, "secure_boot": "disabled"}
    installed = "nvidia/580.95.05, 6.8.0-49-generic, x86_64: installed\n"
    assert no_module_reasons(clean, "absent", installed) == [
        "the module did not load: see 'modprobe nvidia' and the kernel log (dmesg)"
    ]
    # dkms 2.x wrote "nvidia, 535.104.05, 5.15.0-79-generic, x86_64: installed".
    assert no_module_reasons(clean, "absent", "nvidia, 535.104.05, 5.15.0-79-generic, x86_64: installed") == [
        "the module did not load: see 'modprobe nvidia' and the kernel log (dmesg)"
    ]
    reasons = no_module_reasons(
        {"nouveau_loaded": True, "secure_boot": "enabled"}, "requested", "nvidia/580.95.05: added\n"
    )
    assert reasons == [
        "nouveau is loaded and holds the GPUs (blacklist it and rebuild the initramfs)",
        "Secure Boot is on: the module loads only if signed by a key the firmware trusts (a DKMS build needs an "
        "enrolled MOK, nvidia_driver_secure_boot=sign; Ubuntu's precompiled modules are signed by Canonical where "
        "linux-signatures-nvidia exists for the kernel)",
        "DKMS has not installed the module: nvidia/580.95.05: added",
    ]
    assert no_module_reasons({"secure_boot": "enabled"}, "enrolled", "") == [
        "the module did not load: see 'modprobe nvidia' and the kernel log (dmesg)"
    ]

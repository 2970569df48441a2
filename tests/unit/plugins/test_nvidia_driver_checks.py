"""Decisions of the nvidia_driver role after the install (module_utils/nvidia_driver_checks).

The fabric tests read a real ``nvidia-smi -a`` capture of one H100 (driver 560.35.03, Fabric Completed /
Success; tests/fixtures/nvidia-facts/nvidia-smi-q-h100-fabric.txt, research §4) and copies of it edited
here. The mokutil messages are the format strings of rhboot/mokutil src/mokutil.c (research §8). The
nvidia-persistenced units are those of research §6 and §14; the drop-in is the role's own template,
rendered with jinja2 and, where systemd-analyze exists, loaded by systemd itself.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_driver_checks import (
    fabric_problems,
    fabric_states,
    kernels_to_check,
    modules_missing,
    mok_state,
    no_module_reasons,
    persistenced_command,
    reboot_plan,
)
from conftest import NVIDIA_FACTS, ROOT

FACTS = NVIDIA_FACTS
DRIVER_ROLE = ROOT / "roles" / "nvidia_driver"
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
        # print_skip_message(): "%s is already in db\n" (the firmware's own db trusts it), exit 1.
        (1, f"{KEY} is already in db\n", "enrolled"),
        # test_key(): "%s is already in the built-in trusted keyring\n" on stderr, ret -1 (exit 255): the
        # kernel trusts the key already. The role passes stdout and stderr together.
        (255, f"{KEY} is already in the built-in trusted keyring\n", "enrolled"),
        # print_skip_message(): "%s is blocked in dbx\n" / "%s is blocked in MokListXRT\n", exit 1: never trusted.
        (1, f"{KEY} is blocked in dbx\n", "blocked"),
        (1, f"{KEY} is blocked in MokListXRT\n", "blocked"),
        # The text decides, not the exit code: exit 1 is also "EFI variables are not supported on this system".
        (1, "EFI variables are not supported on this system\n", "absent"),
        (255, f"Failed to open {KEY}\n", "absent"),
    ],
)
def test_mok_state_from_the_exact_mokutil_messages(rc, output, state):
    assert mok_state(rc, output) == state


# --- nvidia-persistenced: the packaged command with persistence mode on ---------------------------

# research §6(c): Ubuntu's nvidia-compute-utils-<branch> unit (its ExecStart line, confirmed by captures;
# static, no [Install]). The other lines are those of NVIDIA's template (research §6(a)).
UBUNTU_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --no-persistence-mode --verbose
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced
"""
UBUNTU_PERSISTENT = "/usr/bin/nvidia-persistenced --user nvidia-persistenced --persistence-mode --verbose"
# research §6(b): Debian 12's nvidia-persistenced 535.171.04-1~deb12u1 (the template with --user nvpd).
DEBIAN_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --user nvpd
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced

[Install]
WantedBy=multi-user.target
"""
# research §14: NVIDIA/yum-packaging-nvidia-persistenced nvidia-persistenced.service, verbatim (last changed
# in 32492554, unchanged at fe5d7c89): no user, no --no-persistence-mode.
RHEL_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon
After=syslog.target

[Service]
Type=forking
PIDFile=/var/run/nvidia-persistenced/nvidia-persistenced.pid
Restart=always
ExecStart=/usr/bin/nvidia-persistenced --verbose
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced/*
TimeoutSec=300

[Install]
WantedBy=multi-user.target
"""
STANDIN_UNIT = (ROOT / "tests" / "standin" / "files" / "nvidia-persistenced.service").read_text()


@pytest.mark.parametrize(
    ("unit", "command"),
    [
        # Ubuntu turns persistence off: the same command (its user kept) with only that flag replaced.
        (UBUNTU_UNIT, UBUNTU_PERSISTENT),
        # Debian's and NVIDIA's RHEL units leave persistence on (research §6: it is the daemon's default).
        (DEBIAN_UNIT, ""),
        (STANDIN_UNIT, ""),
        (RHEL_UNIT, ""),
        # An empty ExecStart= resets the list; the command after it is the one systemd runs.
        (UBUNTU_UNIT.replace("ExecStart=", "ExecStart=\nExecStart="), UBUNTU_PERSISTENT),
        ("", ""),
    ],
    ids=["ubuntu", "debian12", "standin", "rhel-nvidia", "reset-then-command", "no-unit"],
)
def test_persistenced_command_per_packaged_unit(unit, command):
    assert persistenced_command(unit) == command


def test_the_standin_unit_is_debians():
    # The upgrade scenario's stand-in must behave like research §6(b)'s unit: no drop-in there.
    assert "ExecStart=/usr/bin/nvidia-persistenced --user nvpd\n" in STANDIN_UNIT
    assert "--no-persistence-mode" not in STANDIN_UNIT


def test_the_filter_exposes_persistenced_command():
    from ansible_collections.deepseek.cluster.plugins.filter.nvidia_driver import FilterModule

    assert FilterModule().filters()["nvidia_persistenced_command"](UBUNTU_UNIT) == UBUNTU_PERSISTENT


def render_dropin(command: str) -> str:
    """roles/nvidia_driver/templates/persistenced-override.conf.j2 as the template module renders it."""
    # Ansible's template module: trim_blocks, the trailing newline kept, no HTML escaping (a unit file).
    env = jinja2.Environment(
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701
    )
    source = (DRIVER_ROLE / "templates" / "persistenced-override.conf.j2").read_text()
    return env.from_string(source).render(
        __nvidia_driver_persistenced_exec=command, ansible_managed="Ansible managed: do not edit"
    )


def service_lines(text: str) -> list[str]:
    """Non-comment lines of a unit file from [Service] to the next section."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("#", ";"))]
    start = lines.index("[Service]") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    return lines[start:end]


def test_the_rendered_dropin_resets_execstart_then_runs_one_command():
    text = render_dropin(persistenced_command(UBUNTU_UNIT))
    assert text.splitlines()[0] == "# Ansible managed: do not edit"
    execs = [line for line in service_lines(text) if line.split("=", 1)[0].strip() == "ExecStart"]
    # systemd: an empty assignment clears the list; Type=forking then takes exactly one command.
    assert execs == ["ExecStart=", f"ExecStart={UBUNTU_PERSISTENT}"]
    command = execs[1].split("=", 1)[1].split()
    assert "--persistence-mode" in command
    assert "--no-persistence-mode" not in command
    assert command[:3] == ["/usr/bin/nvidia-persistenced", "--user", "nvidia-persistenced"]


def _dropin_path() -> str:
    return yaml.safe_load((DRIVER_ROLE / "vars" / "main.yml").read_text())["__nvidia_driver_persistenced_dropin"]


def _systemd_root(tmp: Path, unit: str, dropin: str | None) -> Path:
    """A root with the packaged unit, what its dependencies need to load, and the drop-in (if any)."""
    system = tmp / "lib/systemd/system"
    system.mkdir(parents=True)
    (system / "nvidia-persistenced.service").write_text(unit)
    for target in ("sysinit.target", "basic.target", "shutdown.target", "syslog.target", "multi-user.target"):
        (system / target).write_text(f"[Unit]\nDescription={target}\n")
    for binary in ("usr/bin/nvidia-persistenced", "bin/rm"):
        path = tmp / binary
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    if dropin is not None:
        path = tmp / _dropin_path().lstrip("/")
        path.parent.mkdir(parents=True)
        path.write_text(dropin)
    return tmp


def _verify(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "debug", "LC_ALL": "C"}
    argv = ["systemd-analyze", f"--root={root}", "verify", "nvidia-persistenced.service"]
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=60)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_loads_the_ubuntu_unit_with_the_rendered_dropin(tmp_path):
    if _verify(_systemd_root(tmp_path / "control", UBUNTU_UNIT, None)).returncode != 0:
        pytest.skip("this systemd-analyze cannot verify a unit under --root")
    result = _verify(_systemd_root(tmp_path / "ours", UBUNTU_UNIT, render_dropin(persistenced_command(UBUNTU_UNIT))))
    assert result.returncode == 0, result.stdout + result.stderr
    # systemd's own dump of the loaded unit (debug log): the one command it will run.
    dumped = re.findall(r"-> ExecStart:\s*\n\s*Command Line: (.*)", result.stdout + result.stderr)
    if dumped:
        assert dumped == [UBUNTU_PERSISTENT]
    # The control that shows this check can fail: without the reset line systemd refuses the unit.
    plain = f"[Service]\nExecStart={UBUNTU_PERSISTENT}\n"
    refused = _verify(_systemd_root(tmp_path / "no-reset", UBUNTU_UNIT, plain))
    assert refused.returncode != 0
    assert "more than one ExecStart=" in refused.stdout + refused.stderr


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

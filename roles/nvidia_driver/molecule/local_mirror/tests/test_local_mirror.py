"""nvidia_driver, local_mirror source (layout distro, Debian 12, R535), on the node: the driver came
from the signed flat mirror on the docker network, and from nowhere else."""

import re

# Shared with every scenario of this role (collected and run here, against this scenario's hosts).
from deepseek_testkit.nvidia_userspace import (  # noqa: F401
    test_nvidia_smi_reaches_nvml_and_finds_no_driver,
    test_persistenced_unit_enabled_not_running,
)

testinfra_hosts = ["ansible://molecule-nvidia-driver-node"]

MIRROR = "http://molecule-nvidia-driver-mirror:8080/"
# One name per mirror URL, whichever role writes it (nvidia_packages.mirror_name).
SOURCE = "/etc/apt/sources.list.d/nvidia-mirror-molecule-nvidia-driver-mirror-8080.sources"
KEYRING = "/etc/apt/keyrings/nvidia-mirror-molecule-nvidia-driver-mirror-8080.asc"
USERSPACE = ["nvidia-smi", "libcuda1", "libnvidia-ml1", "nvidia-persistenced"]
HELD = ["nvidia-smi", "libcuda1", "libnvidia-ml1"]  # the packages at the driver's version


def mirror_versions(host):
    """Package -> version, from the mirror's Packages index as the node fetches it."""
    index = host.check_output(
        f"python3 -c 'import urllib.request; print(urllib.request.urlopen(\"{MIRROR}Packages\").read().decode())'"
    )
    stanzas = [dict(re.findall(r"^(Package|Version): (\S+)$", s, re.M)) for s in index.split("\n\n")]
    return {s["Package"]: s["Version"] for s in stanzas if "Package" in s}


def test_user_space_installed_at_the_mirrors_version(host):
    available = mirror_versions(host)
    listing = host.check_output(
        "dpkg-query -W -f '${Package}\\t${Version}\\t${db:Status-Abbrev}\\n' " + " ".join(USERSPACE)
    )
    # Status-Abbrev: want (i or h), then state; state "i" is installed.
    rows = [line.split("\t") for line in listing.splitlines()]
    installed = {name: version for name, version, status in rows if status[1] == "i"}
    assert installed == {name: available[name] for name in USERSPACE}
    assert available["nvidia-smi"].startswith("535.")


def test_driver_packages_are_held(host):
    selections = host.check_output("dpkg --get-selections " + " ".join(HELD))
    held = {line.split()[0].split(":")[0] for line in selections.splitlines() if line.split()[1] == "hold"}
    assert held == set(HELD)


def test_source_points_at_the_mirror_signed_by_its_key(host):
    source = host.file(SOURCE).content_string
    assert re.search(rf"^URIs: {re.escape(MIRROR)}$", source, re.M)
    assert re.search(r"^Suites: /$", source, re.M)
    assert not re.search(r"^Components:", source, re.M)  # flat repository
    assert re.search(rf"^Signed-By: {re.escape(KEYRING)}$", source, re.M)
    assert "Trusted" not in source


def test_keyring_is_the_mirrors_key(host):
    served = host.check_output(
        f"python3 -c 'import urllib.request; print(urllib.request.urlopen(\"{MIRROR}key.asc\").read().decode())'"
    )
    keyring = host.file(KEYRING)
    assert keyring.user == "root"
    assert keyring.mode == 0o644
    assert keyring.content_string.strip() == served.strip()
    assert "BEGIN PGP PUBLIC KEY BLOCK" in served


def test_fetched_index_verifies_against_the_keyring(host):
    # What apt did on update, again: the mirror's InRelease checked with the Signed-By keyring.
    lists = host.check_output("ls /var/lib/apt/lists").split()
    assert "molecule-nvidia-driver-mirror:8080_Packages" in lists
    result = host.run(
        f"k=$(mktemp -d) && gpg --homedir $k --dearmor < {KEYRING} > $k/keyring.gpg"
        " && gpgv --keyring $k/keyring.gpg /var/lib/apt/lists/molecule-nvidia-driver-mirror:8080_InRelease;"
        " rc=$?; rm -rf $k; exit $rc"
    )
    assert result.rc == 0, result.stderr
    assert "Good signature" in result.stderr


def test_nodes_own_sources_carry_no_non_free(host):
    own = [host.file("/etc/apt/sources.list").content_string]
    for path in host.check_output("find /etc/apt/sources.list.d -type f").split():
        if path != SOURCE:
            own.append(host.file(path).content_string)
    assert re.search(r"^deb \S+ bookworm main$", own[0], re.M)
    assert not any(re.search(r"\b(contrib|non-free)", text) for text in own)
    components = host.check_output("apt-get indextargets --format '$(COMPONENT)'").split()
    assert "main" in components
    assert not {"contrib", "non-free", "non-free-firmware"} & set(components)


def test_apt_policy_shows_the_mirror_as_only_origin(host):
    policy = host.check_output("apt-cache policy nvidia-smi")
    installed = re.search(r"^  Installed: (\S+)$", policy, re.M).group(1)
    table = policy.split("Version table:")[1]
    origins = re.findall(r"^ +\d+ (\S+)", table, re.M)
    assert re.search(rf"^ \*\*\* {re.escape(installed)} ", table, re.M)
    assert set(origins) == {MIRROR.rstrip("/"), "/var/lib/dpkg/status"}
    # ... and that source is the repository prepare.yml built and signed (its Release's Origin).
    files = host.check_output("apt-cache policy")
    block = re.search(rf"^ 500 {re.escape(MIRROR.rstrip('/'))}  Packages\n(.*\n){{2}}", files, re.M).group(0)
    assert "o=deepseek-molecule-mirror" in block

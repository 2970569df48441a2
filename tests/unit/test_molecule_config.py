"""Molecule reaches its hosts as production does: SSH with pipelining and checked host keys."""

from conftest import ROOT, load_yaml

SHARED = load_yaml(ROOT / ".config" / "molecule" / "config.yml")
SCENARIOS = sorted(ROOT.glob("roles/*/molecule/*/molecule.yml"))


def test_hosts_are_reached_over_ssh_with_checked_host_keys():
    driver = SHARED["driver"]
    assert driver["name"] == "default"
    assert driver["options"]["managed"] is True
    options = " ".join(driver["ssh_connection_options"])
    assert "StrictHostKeyChecking=yes" in options
    assert "UserKnownHostsFile=${MOLECULE_EPHEMERAL_DIRECTORY}/known_hosts" in options
    config = SHARED["provisioner"]["config_options"]
    # molecule's own ansible.cfg says host_key_checking False, which puts StrictHostKeyChecking=no first.
    assert config["defaults"]["host_key_checking"] is True
    assert config["ssh_connection"]["pipelining"] is True


def test_create_and_destroy_are_the_shared_playbooks():
    playbooks = SHARED["provisioner"]["playbooks"]
    for step in ("create", "destroy", "prepare", "converge"):
        assert playbooks[step].endswith(f"/molecule/shared/{step}.yml")
        assert (ROOT / "molecule" / "shared" / f"{step}.yml").is_file()


def test_no_scenario_brings_back_another_driver_or_unchecked_keys():
    assert SCENARIOS
    for path in SCENARIOS:
        scenario = load_yaml(path) or {}
        assert "driver" not in scenario, path
        options = (scenario.get("provisioner") or {}).get("config_options") or {}
        assert (options.get("defaults") or {}).get("host_key_checking", True) is True, path
        for platform in scenario.get("platforms") or []:
            # The container flags live in molecule/shared/create.yml; a platform names what differs.
            assert set(platform) <= {"name", "groups", "networks"}, path

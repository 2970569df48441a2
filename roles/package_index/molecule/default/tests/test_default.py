"""package_index: a fresh host got its package lists and the package it was asked for, once."""


def test_package_lists_are_there(host):
    lists = host.check_output("find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*'").split()
    assert any("bookworm_main" in name for name in lists), lists


def test_the_package_is_installed_and_runs(host):
    assert host.package("jq").is_installed
    assert host.run("jq --version").rc == 0


def test_the_package_was_installed_once(host):
    # converge installed it; idempotence and the stale-index run must not have asked apt again.
    history = host.file("/var/log/apt/history.log").content_string
    installs = [line for line in history.splitlines() if line.startswith("Install:") and "jq:" in line]
    assert len(installs) == 1, installs

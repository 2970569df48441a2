"""nvidia_packages on its own: a versioned set installed once at one version and held."""


def test_the_set_is_installed_at_one_version(host):
    jq = host.package("jq")
    libjq = host.package("libjq1")
    assert jq.is_installed
    assert libjq.is_installed
    assert jq.version.split("-")[0] == libjq.version.split("-")[0]


def test_the_set_is_held(host):
    held = host.check_output("apt-mark showhold").split()
    assert {"jq", "libjq1"} <= set(held), held


def test_it_was_installed_once(host):
    history = host.file("/var/log/apt/history.log").content_string
    installs = [line for line in history.splitlines() if line.startswith("Install:") and "jq:" in line]
    assert len(installs) == 1, installs

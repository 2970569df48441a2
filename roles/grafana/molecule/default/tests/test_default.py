"""grafana on Debian 12 without Grafana Labs' repository: check mode and refusals changed nothing."""

import pytest


@pytest.mark.parametrize(
    "path",
    [
        "/etc/apt/sources.list.d/grafana.list",
        "/etc/apt/keyrings/grafana.asc",
        "/etc/grafana",
        "/var/lib/grafana",
        "/etc/systemd/system/grafana-server.service",
    ],
)
def test_nothing_was_written(host, path):
    assert not host.file(path).exists


def test_grafana_not_installed(host):
    assert not host.package("grafana").is_installed
    assert not host.exists("grafana-cli")


def test_the_stand_in_key_was_only_read(host):
    key = host.file("/srv/grafana-standin/gpg-full.key")
    assert key.is_file
    assert "stand-in" in key.content_string


def test_the_fresh_package_index_was_not_refreshed(host):
    # Check mode refreshes nothing: the shared prepare left no package lists, and there are still none.
    assert host.run("ls /var/lib/apt/lists/ | grep -c _Packages").stdout.strip() in ("", "0")

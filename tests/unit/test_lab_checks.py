"""The lab's end-to-end checks read real exporter output, and an empty or site-less inventory fails them."""

from conftest import ROOT
from deepseek_testkit import lab

FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "lab"


def host(name, *groups):
    return lab.LabHost(name, sorted(groups), "deepseek-lab", "image")


def test_backends_by_name_from_haproxys_exporter():
    # Captured from a lab proxy: every server of both backends is listed in five states, one of them at 1.
    text = (FIXTURES / "haproxy-metrics-primary-proxy.txt").read_text()
    assert lab.backends_up(text) == {
        "triton_http": {"lab-primary-gpu1", "lab-primary-gpu2"},
        "triton_grpc": {"lab-primary-gpu1", "lab-primary-gpu2"},
    }


def test_a_server_that_is_down_is_not_up():
    text = (FIXTURES / "haproxy-metrics-primary-proxy.txt").read_text()
    down = text.replace(
        'proxy="triton_grpc",server="lab-primary-gpu2",state="UP"} 1',
        'proxy="triton_grpc",server="lab-primary-gpu2",state="UP"} 0',
    )
    assert down != text
    assert lab.backends_up(down)["triton_grpc"] == {"lab-primary-gpu1"}


def test_served_requests_from_tritons_metrics():
    # Captured from a lab node after the checks: 10 successful requests of the lab model.
    assert lab.successful_requests((FIXTURES / "triton-metrics-gpu-node.txt").read_text()) == 10
    assert lab.successful_requests("") == 0


def test_an_inventory_without_gpu_nodes_or_proxies_fails():
    failures = lab.site_checks(None, [host("lab-monitor", "monitoring")])
    assert failures == ["the lab has no hosts in group gpu_nodes", "the lab has no hosts in group proxies"]


def test_a_site_whose_proxy_has_no_nodes_fails():
    hosts = [host("p", "proxies", "primary"), host("s", "proxies", "standby"), host("n", "gpu_nodes", "standby")]
    assert lab.site_checks(None, hosts) == ["site primary has no inference node"]


def test_a_host_outside_both_sites_fails():
    hosts = [host("p", "proxies"), host("n", "gpu_nodes", "primary")]
    assert "p belongs to no site (primary or standby)" in lab.site_checks(None, hosts)


def test_a_site_whose_nodes_have_no_proxy_fails():
    hosts = [host("p", "proxies", "primary"), host("n", "gpu_nodes", "primary"), host("m", "gpu_nodes", "standby")]
    assert lab.site_checks(None, hosts) == ["site standby has no proxy"]


def test_a_lab_without_a_monitoring_host_fails():
    hosts = [host("p", "proxies", "primary"), host("n", "gpu_nodes", "primary")]
    assert lab.site_checks(None, hosts) == ["the lab has no host in group monitoring"]

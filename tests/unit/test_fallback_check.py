"""The lab's overflow check (deepseek_testkit/fallback_check.py) on real HAProxy output and made-up runs."""

from conftest import ROOT
from deepseek_testkit import fallback_check as fc
from deepseek_testkit import lab

FIXTURES = ROOT / "tests" / "unit" / "fixtures" / "lab"
MAIN = {"lab-primary-gpu1", "lab-primary-gpu2"}
FALLBACK = {"lab-primary-fallback"}


def line(fallback, backend, server, path="/v2/models/deepseek/generate_stream"):
    return {"path": path, "fallback": fallback, "backend": backend, "server": server, "status": 200}


def good_run():
    fallback, main = fc.Stream(200, "overflow", [{"text_output": "b"}]), fc.Stream(200, None, [{"text_output": "a"}])
    streams = [fallback] * 3 + [main] * 2
    audit = [line("overflow", "triton_http_fallback", "lab-primary-fallback")] * 3 + [
        line("-", "triton_http", "lab-primary-gpu1"),
        line("-", "triton_http", "lab-primary-gpu2"),
    ]
    served = {"lab-primary-gpu1": 1.0, "lab-primary-gpu2": 1.0, "lab-primary-fallback": 3.0}
    return streams, audit, served


def test_server_maxconn_from_haproxys_show_stat():
    # Captured from Debian 12's HAProxy 2.6.12 running the role's configuration with a fallback pool and the
    # lab's server names, on one machine (addresses 127.0.0.x, no Triton up): the servers' slim is their maxconn.
    text = (FIXTURES / "haproxy-show-stat-fallback.txt").read_text()
    assert fc.configured_maxconn(text, "triton_http") == {"lab-primary-gpu1": 64, "lab-primary-gpu2": 64}
    assert fc.configured_maxconn(text, "triton_http_fallback") == {"lab-primary-fallback": 64}
    assert fc.configured_maxconn(text, "missing") == {}


def test_server_sent_events_are_read_in_order():
    body = 'data: {"text_output":"a"}\n\ndata: {"text_output":"ab"}\n\n: keep-alive\n'
    assert fc.parse_sse(body) == [{"text_output": "a"}, {"text_output": "ab"}]
    assert fc.parse_sse("") == []


def test_successes_from_tritons_metrics():
    assert fc.successes((FIXTURES / "triton-metrics-gpu-node.txt").read_text()) == 10


def test_a_run_with_overflow_and_no_failure_passes():
    assert fc.verdict("p", *good_run(), MAIN, FALLBACK) == []


def test_a_failed_stream_fails():
    streams, audit, served = good_run()
    streams[0] = fc.Stream(503, "overflow", error='{"error":"overloaded"}')
    assert "p: 1 of 5 streams failed" in fc.verdict("p", streams, audit, served, MAIN, FALLBACK)[0]
    streams[0] = fc.Stream(200, "overflow", [{"error": "model failed"}])
    assert fc.verdict("p", streams, audit, served, MAIN, FALLBACK)[0].startswith("p: 1 of 5 streams failed")


def test_no_overflow_at_all_fails():
    streams = [fc.Stream(200, None, [{"text_output": "a"}])] * 5
    audit = [line("-", "triton_http", "lab-primary-gpu1")] * 5
    failures = fc.verdict("p", streams, audit, {"lab-primary-gpu1": 5.0}, MAIN, FALLBACK)
    assert any("0 answers marked" in f for f in failures)


def test_marked_answers_that_the_fallback_did_not_serve_fail():
    streams, audit, served = good_run()
    served = {"lab-primary-gpu1": 4.0, "lab-primary-gpu2": 1.0, "lab-primary-fallback": 0.0}
    assert any("Triton counted 0 on the fallback" in f for f in fc.verdict("p", streams, audit, served, MAIN, FALLBACK))


def test_audit_lines_must_match_the_answers():
    streams, audit, served = good_run()
    missing = fc.verdict("p", streams, audit[:-1], served, MAIN, FALLBACK)
    assert any("4 audit lines for 5 streams" in f for f in missing)
    wrong = audit[:-1] + [line("overflow", "triton_http", "lab-primary-gpu2")]
    assert fc.verdict("p", streams, wrong, served, MAIN, FALLBACK)


def test_a_lab_without_fallback_nodes_checks_nothing():
    hosts = [lab.LabHost("p", ["primary", "proxies"], "net", "image")]
    assert fc.fallback_checks(None, hosts) == []


def test_a_fallback_node_is_not_a_sites_inference_node():
    # site_checks counts a site's inference nodes without its fallback nodes (fallback_check.py's).
    hosts = [
        lab.LabHost("p", ["primary", "proxies"], "net", "image"),
        lab.LabHost("s", ["proxies", "standby"], "net", "image"),
        lab.LabHost("n", ["gpu_nodes", "standby"], "net", "image"),
        lab.LabHost("f", ["fallback_nodes", "gpu_nodes", "primary"], "net", "image"),
    ]
    assert lab.site_checks(None, hosts) == ["site primary has no inference node"]

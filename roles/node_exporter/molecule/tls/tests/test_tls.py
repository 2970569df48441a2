"""TLS (1.3 only) and basic auth in front of the packaged node exporter."""

import re

import pytest

TLS = "/etc/node_exporter/tls"
HTTPS = "https://localhost:9100/metrics"
USER, PASSWORD = "scraper", "molecule-scrape-secret"  # test credential (molecule.yml)


def status(host, args):
    out = host.run(f"curl -sS --max-time 10 -o /dev/null -w '%{{http_code}}' {args}")
    assert out.rc == 0, out.stderr
    return out.stdout.strip()


def test_service_running_and_enabled(host):
    service = host.service("prometheus-node-exporter")
    assert service.is_running
    assert service.is_enabled


def test_plain_http_gets_no_metrics(host):
    out = host.run("curl -sS --max-time 10 -w '\\n%{http_code}' http://127.0.0.1:9100/metrics")
    assert "node_" not in out.stdout
    # Go's TLS server answers a plain HTTP request with 400 and this line, nothing else.
    assert "Client sent an HTTP request to an HTTPS server" in out.stdout
    assert out.stdout.strip().endswith("400")


def test_https_with_ca_and_credentials_gets_metrics(host):
    out = host.check_output(f"curl -fsS --max-time 10 --cacert {TLS}/ca.crt -u {USER}:{PASSWORD} {HTTPS}")
    assert re.search(r"^node_cpu_seconds_total\{", out, re.M)


def test_https_without_credentials_is_401(host):
    assert status(host, f"--cacert {TLS}/ca.crt {HTTPS}") == "401"


def test_https_with_wrong_password_is_401(host):
    assert status(host, f"--cacert {TLS}/ca.crt -u {USER}:not-the-password {HTTPS}") == "401"


def test_https_with_unknown_user_is_401(host):
    assert status(host, f"--cacert {TLS}/ca.crt -u nobody:{PASSWORD} {HTTPS}") == "401"


def test_served_certificate_is_the_configured_one(host):
    fingerprint = "openssl x509 -noout -fingerprint -sha256"
    served = host.check_output(
        f"openssl s_client -connect 127.0.0.1:9100 -servername localhost </dev/null 2>/dev/null | {fingerprint}"
    )
    given = host.check_output(f"{fingerprint} -in {TLS}/server.crt")
    assert served.startswith("sha256 Fingerprint=") or served.startswith("SHA256 Fingerprint=")
    assert served == given


def test_tls12_is_refused_tls13_accepted(host):
    # node_exporter_tls_min_version: TLS13 in this scenario.
    base = f"openssl s_client -connect 127.0.0.1:9100 -CAfile {TLS}/ca.crt -verify_return_error </dev/null"
    tls12 = host.run(f"{base} -tls1_2")
    assert tls12.rc != 0
    assert "alert protocol version" in tls12.stdout + tls12.stderr
    tls13 = host.run(f"{base} -tls1_3")
    assert tls13.rc == 0
    assert "TLSv1.3" in tls13.stdout


def test_the_exporter_reads_its_own_copies_of_root_only_files(host):
    # The source key is root's only (0700 directory, 0600 key); the exporter's group reads the copies.
    assert host.run("runuser -u prometheus -- cat /etc/node_exporter/tls/server.key").rc != 0
    for name in ("tls-server.crt", "tls-server.key"):
        f = host.file(f"/etc/node_exporter/{name}")
        assert (f.user, f.group, f.mode) == ("root", "prometheus", 0o640)
        assert host.run(f"runuser -u prometheus -- cat /etc/node_exporter/{name}").rc == 0
    assert host.file("/etc/node_exporter/tls-server.key").content == host.file(f"{TLS}/server.key").content


@pytest.mark.parametrize("needle", ["cert_file: /etc/node_exporter/tls-server.crt", "min_version: TLS13", "scraper:"])
def test_web_config_file(host, needle):
    f = host.file("/etc/node_exporter/web-config.yml")
    assert (f.user, f.group, f.mode) == ("root", "prometheus", 0o640)
    assert needle in f.content_string

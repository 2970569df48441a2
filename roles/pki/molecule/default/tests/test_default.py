"""pki: keys where they belong, certificates with the right names and usages, the CRL, a real handshake."""

import os
import subprocess
import time
from pathlib import Path

import pytest

PKI = "/etc/deepseek/pki"
NODE = "molecule-pki-default"
STORE = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki"
# The operator's files as the leaver kept them (side_effect.yml copies them before the revocation; the
# store drops a revoked client's key).
LEAVER = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "pki-leaver"


def text(host, path):
    return host.check_output(f"openssl x509 -in {path} -noout -text")


def test_keys_are_private_and_the_ca_key_never_reaches_the_host(host):
    assert host.file(f"{PKI}/private").mode == 0o711
    server_key = host.file(f"{PKI}/private/{NODE}.key")
    assert (server_key.user, server_key.mode) == ("root", 0o600)
    probe_key = host.file(f"{PKI}/private/probe.key")
    assert (probe_key.user, probe_key.mode) == ("nobody", 0o600)
    # Its owner can read it (private/ lets others pass, not list); another user cannot.
    assert host.run(f"runuser -u nobody -- cat {PKI}/private/probe.key").rc == 0
    assert host.run(f"runuser -u nobody -- ls {PKI}/private").rc != 0
    assert host.run(f"runuser -u nobody -- cat {PKI}/private/{NODE}.key").rc != 0
    keys = set(host.check_output("grep -rl 'PRIVATE KEY' /etc /root || true").split())
    # The host's own SSH host keys (ssh-keygen -A at its first boot) are not the role's.
    keys -= {f"/etc/ssh/ssh_host_{kind}_key" for kind in ("rsa", "ecdsa", "ed25519")}
    assert keys == {f"{PKI}/private/{NODE}.key", f"{PKI}/private/{NODE}-metrics.key", f"{PKI}/private/probe.key"}
    assert (STORE / "ca.key").stat().st_mode & 0o777 == 0o600
    assert STORE.stat().st_mode & 0o777 == 0o700


def test_server_certificate_names_the_host_the_vip_and_serves_only(host):
    out = text(host, f"{PKI}/{NODE}.crt")
    for name in (f"DNS:{NODE}", "DNS:inference.lab.internal", "IP Address:10.99.0.10"):
        assert name in out
    address = host.check_output("hostname -I").split()[0]
    assert f"IP Address:{address}" in out
    assert "TLS Web Server Authentication" in out
    assert "TLS Web Client Authentication" not in out
    assert "CA:FALSE" in out
    assert "Issuer: CN = deepseek internal CA" in out


def test_metrics_certificate_names_the_host_only(host):
    out = text(host, f"{PKI}/{NODE}-metrics.crt")
    address = host.check_output("hostname -I").split()[0]
    assert f"DNS:{NODE}" in out
    assert f"IP Address:{address}" in out
    assert "inference.lab.internal" not in out
    assert "10.99.0.10" not in out
    assert "TLS Web Server Authentication" in out
    assert host.file(f"{PKI}/private/{NODE}-metrics.key").mode == 0o600


def test_client_certificate_is_for_clients_only(host):
    out = text(host, f"{PKI}/probe.crt")
    assert "TLS Web Client Authentication" in out
    assert "TLS Web Server Authentication" not in out
    assert "Subject: O = deepseek, CN = probe" in out


def test_chain_and_crl_verify_on_the_host(host):
    for name in (NODE, "probe"):
        result = host.run(f"openssl verify -crl_check -CAfile {PKI}/ca.crt -CRLfile {PKI}/ca.crl {PKI}/{name}.crt")
        assert result.rc == 0, result.stdout + result.stderr


def test_the_revoked_operator_fails_the_crl_check():
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-crl_check",
            "-CAfile",
            str(STORE / "ca.crt"),
            "-CRLfile",
            str(STORE / "ca.crl"),
            str(LEAVER / "operator.crt"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "certificate revoked" in result.stdout + result.stderr
    # The store no longer holds the revoked key: it is never signed again.
    assert not (STORE / "clients" / "operator.key").exists()


@pytest.fixture
def tls_server(host):
    """openssl s_server on the node with its server certificate, requiring a client certificate and the CRL."""
    host.run_expect(
        [0],
        "systemd-run --unit=s-server --property=StandardOutput=file:/root/s_server.log "
        "--property=StandardError=file:/root/s_server.log "
        "openssl s_server -accept 9443 -tls1_3 -www "
        f"-cert {PKI}/{NODE}.crt -key {PKI}/private/{NODE}.key "
        f"-Verify 1 -verify_return_error -CAfile {PKI}/ca.crt -crl_check -CRL {PKI}/ca.crl",
    )
    for _ in range(50):
        if host.run("bash -c 'echo > /dev/tcp/127.0.0.1/9443'").rc == 0:
            break
        time.sleep(0.1)
    yield
    host.run("systemctl stop s-server")


def handshake(host, cert, key):
    return host.run(
        "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | timeout 20 openssl s_client -connect 127.0.0.1:9443 "
        f"-servername {NODE} -tls1_3 "
        f"-CAfile {PKI}/ca.crt -verify_return_error -cert {cert} -key {key} -ign_eof 2>&1"
    )


@pytest.mark.usefixtures("tls_server")
def test_a_real_handshake_admits_the_probe_and_refuses_the_revoked_operator(host):
    admitted = handshake(host, f"{PKI}/probe.crt", f"{PKI}/private/probe.key")
    assert "Verify return code: 0 (ok)" in admitted.stdout
    assert "HTTP/1.0 200 ok" in admitted.stdout
    # The operator's key never left the controller; copy it to the node only for this refusal.
    host.run("install -d -m 0700 /root/revoked")
    for suffix in ("crt", "key"):
        content = (LEAVER / f"operator.{suffix}").read_text()
        host.run(f"cat > /root/revoked/operator.{suffix} <<'EOF'\n{content}EOF")
    refused = handshake(host, "/root/revoked/operator.crt", "/root/revoked/operator.key")
    assert "HTTP/1.0 200 ok" not in refused.stdout
    assert "revoked" in refused.stdout + host.file("/root/s_server.log").content_string


def test_expiry_dates_reach_node_exporters_textfile_collector(host):
    prom = host.file("/var/lib/node_exporter/textfile_collector/deepseek_pki.prom")
    assert (prom.user, prom.mode) == ("root", 0o644)
    samples = dict(
        line.rsplit(" ", 1) for line in prom.content_string.splitlines() if line and not line.startswith("#")
    )
    crl = samples[
        f'deepseek_pki_crl_next_update_timestamp_seconds{{path="{PKI}/ca.crl",issuer="deepseek internal CA"}}'
    ]
    next_update = host.check_output(f"openssl crl -in {PKI}/ca.crl -noout -nextupdate").split("=", 1)[1]
    assert int(crl) == int(host.check_output(f"date -u -d '{next_update}' +%s"))
    cert = samples[f'deepseek_pki_certificate_not_after_timestamp_seconds{{path="{PKI}/molecule-pki-default.crt"}}']
    not_after = host.check_output(f"openssl x509 -in {PKI}/molecule-pki-default.crt -noout -enddate").split("=", 1)[1]
    assert int(cert) == int(host.check_output(f"date -u -d '{not_after}' +%s"))

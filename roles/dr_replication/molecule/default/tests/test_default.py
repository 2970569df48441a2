"""dr_replication between two Debian 12 hosts: what arrives, what is published, what the key cannot do.

Everything happens on the real hosts through the running services (the sender's loop, the receiver's
publisher) over the real SSH connection with the forced rrsync; the tests only change files on the
primary, then wait (with a deadline) for the standby to show the result.
"""

import json
import os
import time

import pytest
import testinfra

PRIMARY = "molecule-dr-replication-primary"
STANDBY = "molecule-dr-replication-standby"
INBOX = "/var/lib/deepseek-dr/inbox"
ARTIFACTS = "/var/lib/triton/artifacts/deepseek"
MODELS = "/var/lib/triton/models/deepseek"
TEXTFILE = "/var/lib/node_exporter/textfile_collector"
SSH = (
    "ssh -i /etc/deepseek/dr/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes "
    "-o UserKnownHostsFile=/etc/deepseek/dr/known_hosts -o ControlPath=none"
)
testinfra_hosts = [f"ansible://{PRIMARY}"]


def host(name):
    """A scenario host through molecule's inventory."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


@pytest.fixture(scope="module")
def primary():
    return host(PRIMARY)


@pytest.fixture(scope="module")
def standby():
    return host(STANDBY)


@pytest.fixture(scope="module")
def standby_address(standby):
    return standby.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]


def wait_for(check, what, timeout=30.0):
    """Call check until it returns a true value; fail naming what did not happen in time."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.5)


def metrics(h, name):
    """The samples of a textfile metric file: {series: value}."""
    text = h.run(f"cat {TEXTFILE}/{name}").stdout
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


def sha256(h, path):
    return h.check_output(f"sha256sum {path}").split()[0]


def publish_version(h, version, megabytes):
    """On the primary, as the triton_server role publishes: staged, manifest, marker, one rename."""
    h.check_output(
        f"set -e; root={ARTIFACTS}; s=$root/.staging-{version}; install -d -g triton -m 0750 $s; cd $s;"
        f" head -c {megabytes * 1_000_000} /dev/urandom > weights.bin; sha256sum weights.bin > .manifest;"
        ' echo "$(sha256sum .manifest | cut -d" " -f1)  .manifest" > .published;'
        f" chgrp -R triton . && chmod 0640 weights.bin .manifest .published; mv -T $s $root/{version}"
    )


def test_services_run_on_their_side(primary, standby):
    assert primary.service("deepseek-dr-sync").is_running
    assert primary.service("deepseek-dr-sync").is_enabled
    assert not primary.service("deepseek-dr-publish").is_running
    assert standby.service("deepseek-dr-publish").is_running
    assert not standby.service("deepseek-dr-sync").is_running


def test_authorized_key_is_forced_to_rrsync(standby):
    keys = standby.file("/var/lib/deepseek-dr/.ssh/authorized_keys")
    assert keys.user == "root"
    assert keys.mode == 0o644
    line = [x for x in keys.content_string.splitlines() if x and not x.startswith("#")]
    assert len(line) == 1
    assert line[0].startswith('restrict,from="')
    assert 'command="/usr/bin/rrsync -wo -munge -no-lock /var/lib/deepseek-dr/inbox"' in line[0]


def test_heartbeat_gives_a_small_lag(standby):
    def fresh():
        samples = metrics(standby, "deepseek_dr.prom")
        return samples if samples.get("deepseek_dr_replication_lag_seconds", 99) < 5 else None

    samples = wait_for(fresh, "a replication lag under 5 s on the standby")
    assert samples["deepseek_dr_receiving"] == 1
    assert abs(samples["deepseek_dr_heartbeat_timestamp_seconds"] - time.time()) < 30


def test_sender_metrics_name_both_streams(primary, standby):
    samples = wait_for(lambda: metrics(primary, "deepseek_dr_sync.prom"), "the sender's metrics")
    assert samples["deepseek_dr_sending"] == 1
    for stream in ("small", "artifacts"):
        assert f'deepseek_dr_sync_last_success_timestamp_seconds{{stream="{stream}",peer="{STANDBY}"}}' in samples
        assert samples[f'deepseek_dr_sync_failures_total{{stream="{stream}",peer="{STANDBY}"}}'] == 0


def test_published_version_arrives_verified_and_owned(primary, standby):
    wait_for(lambda: standby.file(f"{ARTIFACTS}/1/.published").exists, "version 1 published on the standby")
    for rel in ("weights.bin", "tokenizer/tokenizer.json", ".manifest"):
        assert sha256(standby, f"{ARTIFACTS}/1/{rel}") == sha256(primary, f"{ARTIFACTS}/1/{rel}")
        f = standby.file(f"{ARTIFACTS}/1/{rel}")
        assert (f.user, f.group, f.mode) == ("root", "triton", 0o640)
    assert standby.file(f"{ARTIFACTS}/1").group == "triton"


def test_model_repository_is_the_same(primary, standby):
    wait_for(
        lambda: standby.file(f"{INBOX}/small/models/deepseek/config.pbtxt").exists, "the model repository in the inbox"
    )
    assert standby.file(f"{MODELS}/1/model.py").content == primary.file(f"{MODELS}/1/model.py").content
    assert standby.file(f"{MODELS}/config.pbtxt").group == "triton"


def test_new_changed_and_deleted_files(primary, standby):
    inbox = f"{INBOX}/small/models/deepseek/1/extra.txt"
    primary.check_output(f"echo new > {MODELS}/1/extra.txt && chgrp triton {MODELS}/1/extra.txt")
    wait_for(lambda: standby.file(inbox).exists, "a new file in the standby's inbox")
    primary.check_output(f"echo changed > {MODELS}/1/extra.txt")
    wait_for(lambda: standby.file(inbox).content_string == "changed\n", "a changed file")
    # Content the standby never had is not installed into its repository (no new code over the wire).
    samples = wait_for(
        lambda: (
            (s := metrics(standby, "deepseek_dr.prom")).get('deepseek_dr_model_refused_total{model="deepseek"}', 0) >= 1
            and s
        ),
        "the repository with a file new to the standby refused",
    )
    assert samples['deepseek_dr_model_refused_total{model="deepseek"}'] >= 1
    assert not standby.file(f"{MODELS}/1/extra.txt").exists
    primary.check_output(f"rm {MODELS}/1/extra.txt")
    wait_for(lambda: not standby.file(inbox).exists, "a deleted file gone from the standby's inbox")


def test_new_code_is_not_installed(primary, standby):
    primary.check_output(f"cp {MODELS}/1/model.py /root/model.py.bak && echo 'import os' >> {MODELS}/1/model.py")
    try:
        wait_for(
            lambda: "import os" in standby.file(f"{INBOX}/small/models/deepseek/1/model.py").content_string,
            "the changed model.py in the inbox",
        )
        time.sleep(3)  # several passes of the publisher
        assert "import os" not in standby.file(f"{MODELS}/1/model.py").content_string
    finally:
        primary.check_output(f"cp /root/model.py.bak {MODELS}/1/model.py")


def test_new_version_is_published_and_served(primary, standby):
    publish_version(primary, 2, 20)
    # The same code in a new version directory, and the config serving it: what a deploy of version 2 renders.
    primary.check_output(
        f"cp -a {MODELS}/1 {MODELS}/2.new && mv -T {MODELS}/2.new {MODELS}/2 &&"
        f" sed -i 's/versions: \\[1\\]/versions: [2]/' {MODELS}/config.pbtxt"
    )
    wait_for(lambda: standby.file(f"{ARTIFACTS}/2/.published").exists, "version 2 published", 60)
    assert sha256(standby, f"{ARTIFACTS}/2/weights.bin") == sha256(primary, f"{ARTIFACTS}/2/weights.bin")
    wait_for(lambda: "versions: [2]" in standby.file(f"{MODELS}/config.pbtxt").content_string, "the config serving 2")
    assert standby.file(f"{MODELS}/2/model.py").exists
    samples = metrics(standby, "deepseek_dr.prom")
    assert samples['deepseek_dr_version_published{model="deepseek"}'] == 2


def test_interrupted_transfer_leaves_nothing_published_then_completes(primary, standby):
    primary.check_output("systemctl stop deepseek-dr-sync")
    try:
        publish_version(primary, 3, 30)
        # The sender once, at 4 MB/s, killed (its rsync and ssh with it: the unit's cgroup) after 3 s.
        primary.check_output(
            "python3 -c \"import json;c=json.load(open('/etc/deepseek/dr/sync.json'));c['bwlimit_kib']=4000;"
            "json.dump(c,open('/root/slow.json','w'))\""
        )
        primary.run(
            "systemd-run --wait --collect --unit=dr-interrupted --property=RuntimeMaxSec=3"
            " /usr/bin/python3 /usr/local/lib/deepseek-dr/deepseek_dr_sync.py --config /root/slow.json --once"
        )
        partial = standby.run(f"find {INBOX}/artifacts/deepseek/3 -type f -size +100k").stdout
        assert partial.strip(), "some of version 3 arrived before the interruption"
        time.sleep(3)  # the publisher passes over the partial version several times
        assert not standby.file(f"{ARTIFACTS}/3").exists
        assert not standby.file(f"{INBOX}/artifacts/deepseek/3/.published").exists
    finally:
        primary.check_output("systemctl start deepseek-dr-sync")
    wait_for(lambda: standby.file(f"{ARTIFACTS}/3/.published").exists, "version 3 published after the restart", 90)
    assert sha256(standby, f"{ARTIFACTS}/3/weights.bin") == sha256(primary, f"{ARTIFACTS}/3/weights.bin")


def test_tampered_version_is_not_published(primary, standby, standby_address):
    before = metrics(standby, "deepseek_dr.prom").get('deepseek_dr_version_rejected_total{model="deepseek"}', 0)
    # Version 9 with a marker that matches the manifest, and a file that does not match it: pushed with the
    # sender's own key straight into the inbox, as a compromised sender could.
    primary.check_output(
        "set -e; d=/root/bad/9; mkdir -p $d; cd $d; echo good > weights.bin; sha256sum weights.bin > .manifest;"
        ' echo "$(sha256sum .manifest | cut -d" " -f1)  .manifest" > .published; echo evil > weights.bin'
    )
    primary.check_output(f"rsync -r -e '{SSH}' /root/bad/9 deepseek-dr@{standby_address}:artifacts/deepseek/")
    wait_for(
        lambda: (
            metrics(standby, "deepseek_dr.prom").get('deepseek_dr_version_rejected_total{model="deepseek"}', 0) > before
        ),
        "the tampered version counted as rejected",
    )
    assert not standby.file(f"{ARTIFACTS}/9").exists


def attempt(h, command):
    """Run a command that should fail, as (exit status, stdout+stderr); ssh's own 255 included."""
    out = h.check_output(f'{command} 2>&1; echo "rc=$?"')
    body, _, rc = out.rpartition("rc=")
    return int(rc), body


def test_key_opens_no_shell(primary, standby_address):
    for command in ("id", "sh -c id", ""):
        rc, out = attempt(primary, f"{SSH} deepseek-dr@{standby_address} {command} < /dev/null")
        assert rc != 0
        assert "uid=" not in out
    rc, out = attempt(primary, f"{SSH} -tt deepseek-dr@{standby_address} < /dev/null")
    assert rc != 0
    assert "uid=" not in out
    assert "PTY allocation request failed" in out


def test_key_forwards_nothing(primary, standby_address):
    rc, out = attempt(primary, f"{SSH} -W 127.0.0.1:22 deepseek-dr@{standby_address} < /dev/null")
    assert rc != 0
    assert "SSH-2.0" not in out
    assert "administratively prohibited" in out


def test_key_cannot_read_or_write_outside_the_inbox(primary, standby, standby_address):
    read = primary.run(f"rsync -e '{SSH}' deepseek-dr@{standby_address}:small/heartbeat /root/stolen")
    assert read.rc != 0
    assert not primary.file("/root/stolen").exists
    primary.check_output("echo x > /root/probe.txt")
    up = primary.run(f"rsync -e '{SSH}' /root/probe.txt deepseek-dr@{standby_address}:../probe.txt")
    assert up.rc != 0
    assert not standby.file("/var/lib/deepseek-dr/probe.txt").exists
    absolute = primary.run(f"rsync -e '{SSH}' /root/probe.txt deepseek-dr@{standby_address}:/etc/probe.txt")
    assert not standby.file("/etc/probe.txt").exists
    if absolute.rc == 0:  # rrsync anchors absolute paths inside the inbox
        assert standby.file(f"{INBOX}/etc/probe.txt").exists
        standby.check_output(f"rm -rf {INBOX}/etc")
    primary.check_output(
        f"ln -sfn /etc /root/link-out && rsync -l -e '{SSH}' /root/link-out deepseek-dr@{standby_address}:"
    )
    # rrsync -munge: the link arrives, pointing nowhere the publisher (or anyone) could follow out of the inbox.
    assert standby.check_output(f"readlink {INBOX}/link-out").startswith("/rsyncd-munged/")
    standby.check_output(f"rm -rf {INBOX}/link-out")


def test_newer_crl_is_installed_and_a_strangers_is_not(primary, standby):
    primary.check_output(
        "set -e; cd /root/ca; openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=revoked"
        " -keyout r.key -out r.csr; openssl x509 -req -in r.csr -CA ca.crt -CAkey ca.key -days 5 -out r.crt;"
        " openssl ca -config ca.cnf -revoke r.crt -keyfile ca.key -cert ca.crt; sleep 1;"
        " openssl ca -config ca.cnf -gencrl -keyfile ca.key -cert ca.crt -out ca.crl;"
        " cp ca.crl /etc/deepseek/pki/ca.crl"
    )
    revoked = primary.check_output("openssl x509 -in /root/ca/r.crt -noout -serial").split("=")[1]
    wait_for(
        lambda: revoked in standby.run("openssl crl -in /etc/deepseek/pki/ca.crl -noout -text").stdout.replace(":", ""),
        "the CRL revoking a certificate installed on the standby",
    )
    assert standby.file("/etc/deepseek/pki/.reloaded").exists
    installed = standby.file("/etc/deepseek/pki/ca.crl").content_string
    primary.check_output("cp /root/ca/other.crl /etc/deepseek/pki/ca.crl")
    wait_for(
        lambda: "other" in standby.run(f"openssl crl -in {INBOX}/small/pki/ca.crl -noout -issuer").stdout,
        "the stranger's CRL in the inbox",
    )
    time.sleep(3)
    assert standby.file("/etc/deepseek/pki/ca.crl").content_string == installed
    primary.check_output("cp /root/ca/ca.crl /etc/deepseek/pki/ca.crl")


def test_golden_answers_arrive(primary, standby):
    answers = json.dumps({"answers": [{"prompt": "p", "answer": "a"}]})
    primary.check_output(f"echo '{answers}' > /var/lib/deepseek/golden/answers.json")
    wait_for(
        lambda: standby.file(f"{INBOX}/small/golden/answers.json").content_string.strip() == answers,
        "the golden answers in the standby's inbox",
    )

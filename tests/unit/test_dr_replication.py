"""The replication programs of roles/dr_replication/files, on real files (no SSH; molecule has the whole path).

The publisher's checks decide what the standby serves: a version is published only when every file matches
its manifest and the marker matches the manifest; a CRL is installed only when it verifies against the local
CA and is newer. The CRLs here are made by openssl, as a real CA makes them.
"""

from __future__ import annotations

import grp
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

FILES = ROOT / "roles" / "dr_replication" / "files"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, FILES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


publish = _load("deepseek_dr_publish")
sync = _load("deepseek_dr_sync")
GROUP = grp.getgrgid(os.getgid()).gr_name
AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="publishing hands files to root")


def make_version(path: Path, files: dict[str, bytes]) -> None:
    """A version as the triton_server role publishes it: files, .manifest (sha256sum), .published."""
    path.mkdir(parents=True)
    lines = []
    for rel, content in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_bytes(content)
        lines.append(f"{hashlib.sha256(content).hexdigest()}  {rel}\n")
    (path / ".manifest").write_text("".join(lines))
    digest = hashlib.sha256((path / ".manifest").read_bytes()).hexdigest()
    (path / ".published").write_text(f"{digest}  .manifest\n")


def config(tmp_path: Path, **extra) -> publish.Config:
    inbox = tmp_path / "inbox"
    (inbox / "artifacts").mkdir(parents=True, exist_ok=True)
    (inbox / "small").mkdir(parents=True, exist_ok=True)
    values = {"inbox": inbox, "receiving": True, "textfile": tmp_path / "tf" / "deepseek_dr.prom", "group": GROUP}
    values.update(extra)
    return publish.Config(**values)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", "lists no file"),
        ("not a line\n", "line 1 is not sha256sum output"),
        ("a" * 64 + "  ../escape\n", "unsafe path"),
        ("a" * 64 + "  /etc/passwd\n", "unsafe path"),
        ("a" * 64 + "  .published\n", "unsafe path"),
    ],
)
def test_manifest_refuses(text, error):
    with pytest.raises(ValueError, match=error):
        publish.parse_manifest(text)


def test_manifest_reads_sha256sum_output_both_modes():
    text = "A" * 64 + "  weights.bin\n" + "b" * 64 + " *tokenizer/t.json\n"
    assert publish.parse_manifest(text) == {"weights.bin": "a" * 64, "tokenizer/t.json": "b" * 64}


def test_verify_accepts_a_complete_version(tmp_path):
    make_version(tmp_path / "v", {"weights.bin": b"w" * 1000, "tokenizer/t.json": b"{}"})
    assert set(publish.verify_version(tmp_path / "v")) == {"weights.bin", "tokenizer/t.json"}


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda v: (v / "weights.bin").write_bytes(b"tampered"), "sha256 of weights.bin differs"),
        (lambda v: (v / "weights.bin").unlink(), "weights.bin is missing"),
        (lambda v: (v / ".published").write_text("0" * 64 + "  .manifest\n"), "marker does not match"),
        (lambda v: (v / ".manifest").write_text((v / ".manifest").read_text() + "c" * 64 + "  extra\n"), "marker"),
    ],
)
def test_verify_refuses_a_damaged_version(tmp_path, damage, error):
    make_version(tmp_path / "v", {"weights.bin": b"w" * 1000})
    damage(tmp_path / "v")
    with pytest.raises(ValueError, match=error):
        publish.verify_version(tmp_path / "v")


@AS_ROOT
def test_publish_is_complete_owned_and_atomic(tmp_path):
    cfg = config(tmp_path, artifact_root=tmp_path / "artifacts")
    make_version(cfg.inbox / "artifacts" / "deepseek" / "2", {"weights.bin": b"w" * 4096, "tokenizer/t.json": b"{}"})
    publish.publish_artifacts(cfg, publish.State())
    dest = tmp_path / "artifacts" / "deepseek" / "2"
    assert (dest / ".published").is_file()
    assert (dest / "tokenizer" / "t.json").read_bytes() == b"{}"
    assert oct((dest / "weights.bin").stat().st_mode & 0o777) == "0o640"
    assert (dest / "weights.bin").stat().st_uid == 0
    assert not list((tmp_path / "artifacts" / "deepseek").glob(".dr-staging-*"))


@AS_ROOT
def test_a_rejected_version_is_counted_removed_for_a_new_transfer_and_never_published(tmp_path):
    cfg = config(tmp_path, artifact_root=tmp_path / "artifacts")
    version = cfg.inbox / "artifacts" / "deepseek" / "3"
    make_version(version, {"weights.bin": b"w" * 10})
    (version / "weights.bin").write_bytes(b"evil")
    state = publish.State()
    publish.publish_artifacts(cfg, state)
    publish.publish_artifacts(cfg, state)
    assert state.rejected_total == {"deepseek": 1}
    assert not version.exists()  # the sender sends it whole again
    assert not (tmp_path / "artifacts" / "deepseek" / "3").exists()
    text = publish.metrics_text(cfg, state, time.time())
    assert 'deepseek_dr_version_rejected_total{model="deepseek"} 1' in text


@AS_ROOT
def test_a_pinned_manifest_decides_whatever_the_sender_says(tmp_path):
    version = {"weights.bin": b"w" * 10}
    make_version(tmp_path / "ref", version)
    pin = hashlib.sha256((tmp_path / "ref" / ".manifest").read_bytes()).hexdigest()
    cfg = config(tmp_path, artifact_root=tmp_path / "artifacts", pinned={"deepseek/5": "0" * 64, "deepseek/6": pin})
    make_version(cfg.inbox / "artifacts" / "deepseek" / "5", version)  # consistent, but not what was pinned
    make_version(cfg.inbox / "artifacts" / "deepseek" / "6", version)
    state = publish.State()
    publish.publish_artifacts(cfg, state)
    assert state.rejected_total == {"deepseek": 1}
    assert not (tmp_path / "artifacts" / "deepseek" / "5").exists()
    assert (tmp_path / "artifacts" / "deepseek" / "6" / ".published").exists()


def test_with_pins_an_unpinned_version_waits_untouched(tmp_path):
    cfg = config(tmp_path, artifact_root=tmp_path / "artifacts", pinned={"deepseek/1": "0" * 64})
    make_version(cfg.inbox / "artifacts" / "deepseek" / "7", {"w": b"w"})
    state = publish.State()
    publish.publish_artifacts(cfg, state)
    assert not (tmp_path / "artifacts" / "deepseek" / "7").exists()
    assert (cfg.inbox / "artifacts" / "deepseek" / "7" / ".published").exists()
    assert state.unpinned == {"deepseek/7"}
    assert state.rejected_total == {}


def test_a_version_without_its_marker_waits(tmp_path):
    cfg = config(tmp_path, artifact_root=tmp_path / "artifacts")
    make_version(cfg.inbox / "artifacts" / "deepseek" / "4", {"weights.bin": b"w"})
    (cfg.inbox / "artifacts" / "deepseek" / "4" / ".published").unlink()
    publish.publish_artifacts(cfg, publish.State())
    assert not (tmp_path / "artifacts" / "deepseek" / "4").exists()


def test_policy_versions_read_config_pbtxt():
    assert publish.policy_versions("version_policy: { specific: { versions: [3, 4] } }", ["1"]) == ["3", "4"]
    assert publish.policy_versions("version_policy { specific { versions: 2 } }", []) == ["2"]
    assert publish.policy_versions('name: "m"', ["1", "2"]) == ["1", "2"]


def write_model(root: Path, versions: list[str], dirs: list[str]) -> None:
    (root / "deepseek").mkdir(parents=True, exist_ok=True)
    (root / "deepseek" / "config.pbtxt").write_text(
        f"version_policy: {{ specific: {{ versions: [{', '.join(versions)}] }} }}\n"
    )
    for d in dirs:
        (root / "deepseek" / d).mkdir(exist_ok=True)
        (root / "deepseek" / d / "model.py").write_text(f"# {d}\n")


def test_a_model_waits_for_the_artifacts_the_active_site_published(tmp_path):
    cfg = config(tmp_path, artifact_root=tmp_path / "artifacts", model_repository=tmp_path / "models")
    write_model(cfg.inbox / "small" / "models", ["2"], ["1", "2"])
    (cfg.inbox / "small" / "published.json").write_text(json.dumps({"deepseek/2": "x"}))
    assert publish.models_ready(cfg, cfg.inbox / "small" / "models" / "deepseek") == []
    make_version(tmp_path / "artifacts" / "deepseek" / "2", {"w": b"w"})
    assert publish.models_ready(cfg, cfg.inbox / "small" / "models" / "deepseek") == ["2"]


def test_a_model_naming_a_missing_version_directory_waits(tmp_path):
    cfg = config(tmp_path, model_repository=tmp_path / "models")
    write_model(cfg.inbox / "small" / "models", ["3"], ["2"])
    assert publish.models_ready(cfg, cfg.inbox / "small" / "models" / "deepseek") == []


@AS_ROOT
def test_install_tree_mirrors_and_reports_change(tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    write_model(src, ["2"], ["2"])
    write_model(dest, ["1"], ["1"])
    gid = grp.getgrnam(GROUP).gr_gid
    assert publish.install_tree(publish.tree(src / "deepseek"), dest / "deepseek", gid) is True
    assert publish.tree(src / "deepseek") == publish.tree(dest / "deepseek")
    assert not (dest / "deepseek" / "1").exists()
    assert publish.install_tree(publish.tree(src / "deepseek"), dest / "deepseek", gid) is False


def test_no_new_code_comes_over_the_wire():
    local = {
        "config.pbtxt": b'name: "deepseek"\nversion_policy {\n  specific {\n    versions: 1\n  }\n}\n',
        "1": None,
        "1/model.py": b"# the role's model\n",
        "1/model.yaml": b"model: /var/lib/triton/artifacts/deepseek/1\n",
    }
    new_version = {
        "config.pbtxt": b'name: "deepseek"\nversion_policy {\n  specific {\n    versions: [2]\n  }\n}\n',
        "2": None,
        "2/model.py": b"# the role's model\n",
        "2/model.yaml": b"model: /var/lib/triton/artifacts/deepseek/2\n",
    }
    assert publish.foreign_files(new_version, local, "deepseek") == []
    changed_code = {**new_version, "2/model.py": b"import os; os.system('id')\n"}
    assert publish.foreign_files(changed_code, local, "deepseek") == ["2/model.py"]
    other_backend = {**new_version, "config.pbtxt": new_version["config.pbtxt"].replace(b'"deepseek"', b'"other"')}
    assert publish.foreign_files(other_backend, local, "deepseek") == ["config.pbtxt"]
    other_yaml = {**new_version, "2/model.yaml": b"model: /tmp/elsewhere\ntrust_remote_code: true\n"}
    assert publish.foreign_files(other_yaml, local, "deepseek") == ["2/model.yaml"]
    # Nothing hides in the blanked policy: a comment, a second policy or another field there is foreign.
    for config in (
        b'name: "deepseek"\nversion_policy {\n  specific {\n    versions: 2 # versions: 9\n  }\n}\n',
        b'name: "deepseek"\nversion_policy {\n  specific {\n    versions: 2 label: "x"\n  }\n}\n',
        b'name: "deepseek"\nversion_policy { specific { versions: 2 } }\n'
        b"version_policy { latest { num_versions: 1 } }\n",
    ):
        assert publish.foreign_files({**new_version, "config.pbtxt": config}, local, "deepseek") == ["config.pbtxt"]


@AS_ROOT
def test_a_model_with_foreign_files_is_refused_and_counted(tmp_path):
    cfg = config(tmp_path, model_repository=tmp_path / "models")
    write_model(cfg.model_repository, ["1"], ["1"])
    write_model(cfg.inbox / "small" / "models", ["2"], ["2"])
    (cfg.inbox / "small" / "models" / "deepseek" / "2" / "model.py").write_text("# 1\n")  # known code: allowed
    state = publish.State()
    publish.install_models(cfg, state)
    assert "versions: [2]" in (cfg.model_repository / "deepseek" / "config.pbtxt").read_text()
    (cfg.inbox / "small" / "models" / "deepseek" / "2" / "model.py").write_text("# new code\n")
    publish.install_models(cfg, state)
    assert (cfg.model_repository / "deepseek" / "2" / "model.py").read_text() == "# 1\n"
    assert state.refused_total == {"deepseek": 1}
    assert 'deepseek_dr_model_refused_total{model="deepseek"} 1' in publish.metrics_text(cfg, state, 1.0)


def test_tree_leaves_out_rsyncs_holding_directory(tmp_path):
    (tmp_path / ".~tmp~").mkdir()
    (tmp_path / ".~tmp~" / "config.pbtxt").write_text("half")
    (tmp_path / "config.pbtxt").write_text("whole")
    assert publish.tree(tmp_path) == {"config.pbtxt": b"whole"}


def test_prune_drops_versions_the_active_site_no_longer_lists(tmp_path):
    cfg = config(tmp_path)
    for v in ("1", "2"):
        make_version(cfg.inbox / "artifacts" / "deepseek" / v, {"w": b"w"})
    (cfg.inbox / "artifacts" / "deepseek" / "3").mkdir()  # still arriving: no marker, kept
    (cfg.inbox / "small" / "published.json").write_text(json.dumps({"deepseek/2": "x"}))
    publish.prune_inbox(cfg)
    assert sorted(p.name for p in (cfg.inbox / "artifacts" / "deepseek").iterdir()) == ["2", "3"]


def test_metrics_carry_the_lag_and_start_counters_at_zero(tmp_path):
    cfg = config(tmp_path)
    (cfg.inbox / "small" / "heartbeat").write_text("1000.5\n")
    (cfg.inbox / "artifacts" / "deepseek").mkdir()
    state = publish.State()
    publish.known_models(cfg, state)
    text = publish.metrics_text(cfg, state, 1003.0)
    assert "deepseek_dr_receiving 1" in text
    assert "deepseek_dr_heartbeat_timestamp_seconds 1000.500" in text
    assert "deepseek_dr_replication_lag_seconds 2.500" in text
    assert 'deepseek_dr_version_rejected_total{model="deepseek"} 0' in text


def test_no_heartbeat_no_lag(tmp_path):
    text = publish.metrics_text(config(tmp_path), publish.State(), 5.0)
    assert "deepseek_dr_replication_lag_seconds" not in text
    assert "deepseek_dr_metrics_timestamp_seconds 5.000" in text


@pytest.fixture(scope="module")
def cas(tmp_path_factory) -> Path:
    """Two CAs (ours and a stranger's), each with a CRL, and a second, later CRL of ours."""
    d = tmp_path_factory.mktemp("ca")
    script = """
set -e
for ca in ca other; do
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=$ca \\
    -keyout $ca.key -out $ca.crt
  mkdir -p $ca.db && : > $ca.db/index && echo 01 > $ca.db/crlnumber
  printf '[ca]\\ndefault_ca=c\\n[c]\\ndatabase=%s/index\\ncrlnumber=%s/crlnumber\\n' $ca.db $ca.db > $ca.cnf
  printf 'default_md=sha256\\ndefault_crl_days=7\\n' >> $ca.cnf
  openssl ca -config $ca.cnf -gencrl -keyfile $ca.key -cert $ca.crt -out $ca.crl
done
sleep 1.1
openssl ca -config ca.cnf -gencrl -keyfile ca.key -cert ca.crt -out newer.crl
"""
    subprocess.run(["bash", "-c", script], cwd=d, check=True, capture_output=True)
    return d


def test_crl_checks_with_openssl(cas):
    ours, newer, other = ((cas / n).read_text() for n in ("ca.crl", "newer.crl", "other.crl"))
    assert publish.crl_verifies(ours, cas / "ca.crt")
    assert not publish.crl_verifies(other, cas / "ca.crt")
    assert publish.crl_last_update(newer) > publish.crl_last_update(ours)
    assert abs(publish.crl_last_update(ours) - time.time()) < 600


def test_only_a_newer_crl_of_our_ca_is_installed(tmp_path, cas):
    pki = tmp_path / "pki"
    pki.mkdir()
    shutil.copy(cas / "ca.crt", pki / "ca.crt")
    shutil.copy(cas / "newer.crl", pki / "ca.crl")
    cfg = config(tmp_path, pki_dir=pki, pki_reload=["touch", str(tmp_path / "reloaded")])
    (cfg.inbox / "small" / "pki").mkdir()
    incoming = cfg.inbox / "small" / "pki" / "ca.crl"
    state = publish.State()
    for older_or_strange in ("ca.crl", "other.crl"):
        shutil.copy(cas / older_or_strange, incoming)
        publish.install_crl(cfg, state)
        assert (pki / "ca.crl").read_text() == (cas / "newer.crl").read_text()
        assert not (tmp_path / "reloaded").exists()
    shutil.copy(cas / "ca.crl", pki / "ca.crl")
    shutil.copy(cas / "newer.crl", incoming)
    publish.install_crl(cfg, state)
    assert (pki / "ca.crl").read_text() == (cas / "newer.crl").read_text()
    assert (tmp_path / "reloaded").exists()


def test_sender_pushes_the_outbox_whole_and_versions_marker_last(tmp_path):
    cfg = sync.Config(
        peers=[sync.Peer(name="s1", address="fd00::5", port=2222)],
        outbox=tmp_path / "outbox",
        ssh_key=Path("/etc/deepseek/dr/id_ed25519"),
        known_hosts=Path("/etc/deepseek/dr/known_hosts"),
        control_dir=Path("/run/x"),
        textfile=None,
        bwlimit_kib=5000,
    )
    small = sync.small_rsync_argv(cfg, cfg.peers[0])
    for flag in ("--delete", "--delay-updates", "--checksum"):
        assert flag in small
    assert small[-2:] == [f"{tmp_path}/outbox/", "deepseek-dr@[fd00::5]:small/"]
    ssh = small[small.index("-e") + 1]
    for option in ("StrictHostKeyChecking=yes", "BatchMode=yes", "IdentitiesOnly=yes", "-p 2222", "/%C-small"):
        assert option in ssh
    files = sync.artifact_rsync_argv(cfg, cfg.peers[0], Path("/a/deepseek/2"), "deepseek/2", False)
    assert "--partial-dir=.rsync-partial" in files
    assert "--exclude=/.published" in files
    assert "--bwlimit=5000" in files
    assert "/%C-artifacts" in files[files.index("-e") + 1]  # its own connection: never in the heartbeat's way
    marker = sync.artifact_rsync_argv(cfg, cfg.peers[0], Path("/a/deepseek/2"), "deepseek/2", True)
    assert marker[-2:] == ["/a/deepseek/2/.published", "deepseek-dr@[fd00::5]:artifacts/deepseek/2/"]


def test_sender_lists_published_versions_only(tmp_path):
    make_version(tmp_path / "deepseek" / "1", {"w": b"w"})
    (tmp_path / "deepseek" / "2").mkdir()  # not published yet
    (tmp_path / "deepseek" / ".staging-3").mkdir()
    found = sync.published_versions(tmp_path)
    assert list(found) == ["deepseek/1"]


def test_sender_metrics_start_at_zero_failures(tmp_path):
    metrics = sync.Metrics(tmp_path / "m.prom", ["s1"])
    text = (tmp_path / "m.prom").read_text()
    assert 'deepseek_dr_sync_failures_total{stream="small",peer="s1"} 0' in text
    assert "deepseek_dr_sending 1" in text
    metrics.record("artifacts", "s1", False, 1.5)
    metrics.record("small", "s1", True, 0.25)
    text = (tmp_path / "m.prom").read_text()
    assert 'deepseek_dr_sync_failures_total{stream="artifacts",peer="s1"} 1' in text
    assert 'deepseek_dr_sync_duration_seconds{stream="artifacts",peer="s1"} 1.500' in text
    success = next(line for line in text.splitlines() if line.startswith("deepseek_dr_sync_last_success"))
    assert abs(float(success.rsplit(" ", 1)[1]) - time.time()) < 5

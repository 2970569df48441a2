"""The grafana role's dashboards, its rendered configuration, and tests/testkit/deepseek_testkit/dashboard_check.py.

Grafana itself is not installed here (Grafana Labs' repository is out of reach), so what can be proven
without it is proven here:

- every dashboard (roles/grafana/files/dashboards/*.json) is valid JSON with a uid (its file name), a
  title and a current schemaVersion, unique panel ids, the ${datasource} Prometheus variable on every
  panel and target, site and node variables from label_values(), and a query in every target;
- every query, Grafana's variables replaced, is accepted by Prometheus's own parser: promtool check
  rules, each query a recording rule;
- the role's templates (grafana.ini, the data source, the dashboard provider) rendered by Ansible itself
  from the role's defaults and vars, for a plain and an HTTPS host; the provider reads the directory the
  role copies the dashboards into; secrets stay out of grafana.ini; bad input is refused by
  tasks/assert.yml with a message naming the variable;
- dashboard_check.py's pure parts: variable substitution and the GPU-only classification.
Evaluating the queries against real series is the lab's part (dashboard_check.empty_panels).
"""

from __future__ import annotations

import configparser
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from deepseek_testkit import dashboard_check as CHECK

ROLE = ROOT / "roles" / "grafana"
DASHBOARD_DIR = ROLE / "files" / "dashboards"
DASHBOARDS = sorted(DASHBOARD_DIR.glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana 11.0 wrote schemaVersion 39; 41 is Grafana 12's (apps/dashboard/pkg/migration/schemaversion).
MIN_SCHEMA = 39


def walk(panels):
    for panel in panels:
        yield panel
        yield from walk(panel.get("panels", []))


def queries(board):
    """(panel, target) for every target of every panel."""
    for panel in walk(board["panels"]):
        for target in panel.get("targets", []):
            yield panel, target


@pytest.fixture(scope="module", params=DASHBOARDS, ids=lambda p: p.name)
def board(request):
    return json.loads(request.param.read_text()), request.param


# ---- the dashboards ------------------------------------------------------------------------------


def test_the_role_ships_the_five_dashboards():
    assert [p.stem for p in DASHBOARDS] == [
        "deepseek-gpu",
        "deepseek-nodes",
        "deepseek-overview",
        "deepseek-proxy",
        "deepseek-triton",
    ]


def test_dashboard_has_uid_title_and_a_current_schema(board):
    data, path = board
    assert data["uid"] == path.stem
    assert len(data["uid"]) <= 40  # Grafana's limit for a uid
    assert data["title"].startswith("DeepSeek: ")
    assert isinstance(data["schemaVersion"], int)
    assert data["schemaVersion"] >= MIN_SCHEMA
    assert data.get("id") is None  # provisioned: Grafana assigns the database id


def test_titles_are_unique_across_dashboards():
    titles = [json.loads(p.read_text())["title"] for p in DASHBOARDS]
    assert len(titles) == len(set(titles))


def test_panel_ids_are_unique(board):
    data = board[0]
    ids = [panel["id"] for panel in walk(data["panels"])]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]


def test_every_panel_and_target_uses_the_datasource_variable(board):
    data = board[0]
    for panel in walk(data["panels"]):
        if panel["type"] == "row":
            continue
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel.get("targets"), f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]


def test_every_target_has_a_query_and_a_unique_ref(board):
    data = board[0]
    for panel in walk(data["panels"]):
        refs = [t.get("refId") for t in panel.get("targets", [])]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel.get("targets", []):
            assert isinstance(target.get("expr"), str), panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_variables_datasource_site_and_node_from_label_values(board):
    data = board[0]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("site", "node"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert re.fullmatch(r"label_values\(.+, " + name + r"\)", variable["definition"]), variable["definition"]
        assert variable["query"]["query"] == variable["definition"]
        assert variable["includeAll"] is True
        assert variable["multi"] is True


def test_every_variable_a_query_uses_is_defined_or_grafanas_own(board):
    data = board[0]
    defined = {v["name"] for v in data["templating"]["list"]} | {"__rate_interval", "__interval", "__range"}
    for panel, target in queries(data):
        used = {m.group(1) or m.group(2) or m.group(3) for m in CHECK._VARIABLE.finditer(target["expr"])}
        assert used <= defined, (panel["title"], used - defined)


def test_queries_filter_on_the_selected_site(board):
    data = board[0]
    for panel, target in queries(data):
        expr = target["expr"]
        if CHECK.metric_names(expr) <= {"ALERTS", "up"} and "$site" not in expr:
            # Alerts carry the labels their rule gives them; the overview counts targets of every site (the
            # monitoring host's own prometheus and alertmanager jobs have no site label).
            continue
        assert 'site=~"$site"' in expr, (panel["title"], expr)


def test_every_query_is_accepted_by_prometheus_parser(board, tmp_path, promtool):
    data, path = board
    rules = []
    for number, (panel, target) in enumerate(queries(data)):
        expr = CHECK.substitute(target["expr"], {})
        rules.append({"record": f"grafana_check:{path.stem.replace('-', '_')}:{number}", "expr": expr})
        rules[-1]["labels"] = {"panel": f"{panel['title']} [{target['refId']}]"}
    rule_file = tmp_path / f"{path.stem}.rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": path.stem, "rules": rules}]}, sort_keys=False))
    result = subprocess.run(
        [str(promtool), "check", "rules", str(rule_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


COUNTERS = ROOT / "roles" / "dcgm_exporter" / "templates" / "counters.csv.j2"


def test_gpu_panels_read_the_fields_the_dcgm_exporter_role_exports():
    # dcgm-exporter names each metric after its counters file row; a field renamed there empties a panel.
    rows = set(re.findall(r"^(DCGM_\w+)\s*,", COUNTERS.read_text(), flags=re.MULTILINE))
    used = set()
    for path in DASHBOARDS:
        for target in [pair[1] for pair in queries(json.loads(path.read_text()))]:
            used |= {name for name in CHECK.metric_names(target["expr"]) if name.startswith("DCGM_")}
    assert used, "no DCGM field in the dashboards"
    assert used <= rows, sorted(used - rows)


# ---- dashboard_check.py ----------------------------------------------------------------------------


def test_substitute_replaces_grafanas_variable_syntaxes():
    expr = 'rate(x{site=~"$site", node=~"${node}", gpu=~"[[gpu]]", m=~"${model:regex}"}[$__rate_interval])'
    assert CHECK.substitute(expr) == 'rate(x{site=~".+", node=~".+", gpu=~".+", m=~".+"}[2m])'
    assert CHECK.substitute('up{node=~"$node"}', {"node": "lab-primary-proxy"}) == 'up{node=~"lab-primary-proxy"}'
    assert CHECK.substitute("rate(x[$__interval])", {"__interval": "1m"}) == "rate(x[1m])"


def test_substitute_refuses_an_unknown_variable():
    with pytest.raises(KeyError, match=r"\$pool"):
        CHECK.substitute('up{pool=~"$pool"}')


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (site) (rate(haproxy_frontend_http_requests_total{proxy="x"}[5m]))',
            {"haproxy_frontend_http_requests_total"},
        ),
        ("1e-3 * sum by (model) (rate(a_us[2m])) / sum by (model) (rate(b[2m]))", {"a_us", "b"}),
        ('count(ALERTS{alertstate="firing"}) or vector(0)', {"ALERTS"}),
        ("x / ignoring(node) group_left sum(y)", {"x", "y"}),
        ('floor(DCGM_FI_DEV_CLOCKS_EVENT_REASONS{gpu=~"0"} / 8) % 2', {"DCGM_FI_DEV_CLOCKS_EVENT_REASONS"}),
        (
            'node_load1{n="a"} / on (node) count by (node) (node_cpu_seconds_total{mode="idle"})',
            {"node_load1", "node_cpu_seconds_total"},
        ),
        ("time() - haproxy_process_start_time_seconds", {"haproxy_process_start_time_seconds"}),
        ('histogram_quantile(0.9, sum by (le) (rate(h_bucket{a=~"$site"}[$__rate_interval])))', {"h_bucket"}),
    ],
)
def test_metric_names(expr, names):
    assert CHECK.metric_names(expr) == names


@pytest.mark.parametrize(
    ("expr", "gpu_only"),
    [
        ("DCGM_FI_DEV_GPU_TEMP", True),
        ("rate(DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL[2m])", True),
        ("DCGM_EXP_XID_ERRORS_COUNT", True),
        ('nv_gpu_utilization{job="triton"}', True),
        ("nv_energy_consumption", True),
        ("max by (node) (deepseek_gpus_expected)", True),
        ("nv_cpu_utilization", False),
        ("nv_inference_request_success", False),
        ('node_systemd_unit_state{name="nvidia-fabricmanager.service"}', False),
        ('up{job="dcgm"}', False),
        ("deepseek_probe_success", False),
    ],
)
def test_gpu_only_classification_follows_metric_names(expr, gpu_only):
    assert CHECK.is_gpu_only(expr) is gpu_only


def test_gpu_dashboard_is_gpu_only_and_the_others_are_not_except_tritons_gpu_row():
    for path in DASHBOARDS:
        data = json.loads(path.read_text())
        for panel, target in queries(data):
            gpu_only = CHECK.is_gpu_only(target["expr"])
            expected = path.stem == "deepseek-gpu" or (
                path.stem == "deepseek-triton" and panel["title"].startswith("GPU ")
            )
            if expected:
                assert gpu_only, (panel["title"], target["expr"])
            else:
                assert not gpu_only, (path.stem, panel["title"], target["expr"])


def test_panel_targets_walks_rows_and_skips_empty_queries():
    board = {
        "panels": [
            {"type": "row", "title": "r", "panels": [{"title": "inner", "targets": [{"refId": "A", "expr": "up"}]}]},
            {"title": "outer", "targets": [{"refId": "A", "expr": "x"}, {"refId": "B", "expr": ""}]},
        ]
    }
    assert list(CHECK.panel_targets(board)) == [("inner", "A", "up"), ("outer", "A", "x")]


def test_variable_queries_become_count_by_the_label():
    board = {
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {"name": "site", "type": "query", "query": {"query": 'label_values(up{job="triton"}, site)'}},
                {"name": "node", "type": "query", "query": 'label_values(up{a="x", site=~"$site"}, node)'},
                {"name": "all", "type": "query", "query": "label_values(job)"},
                {"name": "c", "type": "custom", "query": "a,b"},
            ]
        }
    }
    assert list(CHECK.variable_queries(board)) == [
        ("site", 'count by (site) (up{job="triton"})', "site"),
        ("node", 'count by (node) (up{a="x", site=~"$site"})', "node"),
    ]


def test_every_dashboard_variable_but_the_data_source_is_checked():
    for path in DASHBOARDS:
        data = json.loads(path.read_text())
        names = {item[0] for item in CHECK.variable_queries(data)}
        wanted = {v["name"] for v in data["templating"]["list"] if v["type"] == "query"}
        assert names == wanted, (path.name, wanted - names)


def test_has_series():
    assert CHECK.has_series({"resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}]})
    assert not CHECK.has_series({"resultType": "vector", "result": []})
    assert not CHECK.has_series({"resultType": "matrix", "result": []})
    assert CHECK.has_series({"resultType": "scalar", "result": [0, "1"]})


def test_empty_panels_skips_gpu_only_and_healthy_empty_queries_without_asking(tmp_path, monkeypatch):
    board = {
        "title": "t",
        "templating": {
            "list": [
                {"name": "site", "type": "query", "query": "label_values(up, site)"},
                {"name": "pool", "type": "query", "query": "label_values(up, pool)"},
                {"name": "gpu", "type": "query", "query": "label_values(DCGM_FI_DEV_GPU_TEMP, gpu)"},
            ]
        },
        "panels": [
            {"title": "gpu", "targets": [{"refId": "A", "expr": 'DCGM_FI_DEV_GPU_TEMP{site=~"$site"}'}]},
            {"title": "alerts", "targets": [{"refId": "A", "expr": "count by (alertname) (ALERTS)"}]},
            {"title": "up", "targets": [{"refId": "A", "expr": 'up{site=~"$site"}'}]},
            {"title": "gone", "targets": [{"refId": "A", "expr": 'renamed_metric{site=~"$site"}'}]},
        ],
    }
    path = tmp_path / "t.json"
    path.write_text(json.dumps(board))
    asked = []

    def fake_query(url, expr, timeout=30.0, context=None):
        asked.append(expr)
        if expr.startswith("count by"):  # every up series has a site label, none has a pool label
            return {
                "resultType": "vector",
                "result": [{"metric": {"site": "primary"}, "value": [0, "2"]}]
                if "(site)" in expr
                else [{"metric": {}, "value": [0, "2"]}],
            }
        return {"resultType": "vector", "result": [{"metric": {}, "value": [0, "1"]}] if expr.startswith("up") else []}

    monkeypatch.setattr(CHECK, "query", fake_query)
    assert CHECK.empty_panels("http://prometheus.invalid", [path], {}) == [
        "t / variable $pool [query]: count by (pool) (up)",
        't / gone [A]: renamed_metric{site=~".+"}',
    ]
    assert asked == ["count by (site) (up)", "count by (pool) (up)", 'up{site=~".+"}', 'renamed_metric{site=~".+"}']
    assert CHECK.gpu_only_panels([path]) == ["t / gpu [A]"]


# ---- the role's configuration, rendered by Ansible -----------------------------------------------

ADMIN_PASSWORD = "correct horse battery staple"  # noqa: S105 (a test value)
PROMETHEUS_PASSWORD = "pa$word-$HOME"  # noqa: S105 (a test value, with "$" that Grafana would expand)

RENDER_PLAY = """
- name: Render the grafana role's configuration
  hosts: all
  gather_facts: false
  vars_files:
    - {role}/vars/main.yml
    - {role}/vars/Debian.yml
  tasks:
    - name: Validate as the role does, and render (set_fact only, no module runs on the hosts)
      block:
        - name: Validate
          ansible.builtin.include_tasks: {role}/tasks/assert.yml
        - name: Render each template
          ansible.builtin.set_fact:
            __test_result: >-
              {{{{ dict({names} | zip(query('ansible.builtin.template', {templates})))
                  | combine({{'ini_extra_secret': __grafana_ini_extra_secret | bool | string}}) }}}}
      rescue:
        - name: Keep the refusal
          ansible.builtin.set_fact:
            __test_result:
              refused: >-
                {{{{ ansible_failed_result.msg }}}}
                {{{{ ansible_failed_result.results | default([]) | selectattr('failed', 'defined')
                    | selectattr('failed') | map(attribute='msg') | join(' ') }}}}

    - name: Write what every host got
      ansible.builtin.copy:
        dest: "{out}/rendered.json"
        content: >-
          {{{{ dict(ansible_play_hosts | zip(ansible_play_hosts | map('extract', hostvars, '__test_result')))
              | to_json }}}}
        mode: "0644"
      run_once: true
      delegate_to: localhost
"""

BAD = {
    "short-password": ({"grafana_admin_password": "admin"}, ["grafana_admin_password"]),
    "cert-without-key": (
        {"grafana_tls_cert_file": "/etc/ssl/x.crt"},
        ["grafana_tls_cert_file", "grafana_tls_key_file"],
    ),
    "port": ({"grafana_http_port": 70000}, ["grafana_http_port"]),
    "prometheus-url": ({"grafana_prometheus_url": "127.0.0.1:9090"}, ["grafana_prometheus_url"]),
    "ca-over-http": ({"grafana_prometheus_ca_file": "/etc/ssl/ca.crt"}, ["grafana_prometheus_ca_file"]),
    "basic-auth-half": ({"grafana_prometheus_basic_auth_user": "grafana"}, ["grafana_prometheus_basic_auth_password"]),
    "ini-clash": ({"grafana_ini_extra": {"auth.anonymous": {"enabled": True}}}, ["grafana_ini_extra", "enabled"]),
    "ini-shape": ({"grafana_ini_extra": {"smtp": "on"}}, ["grafana_ini_extra"]),
    "tls-version": ({"grafana_tls_min_version": "TLS1.1"}, ["grafana_tls_min_version", "TLS1.3"]),
    "key-url": ({"grafana_apt_key_url": "ftp://mirror/gpg.key"}, ["grafana_apt_key_url"]),
    "version": ({"grafana_version": "v12.1.1"}, ["grafana_version"]),
    "dashboards-dir": ({"grafana_dashboards_dir": "/etc/grafana/provisioning/dashboards"}, ["grafana_dashboards_dir"]),
    "interval": ({"grafana_prometheus_scrape_interval": "30"}, ["grafana_prometheus_scrape_interval"]),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    work = tmp_path_factory.mktemp("grafana")
    out = work / "out"
    pem = work / "pem"
    pem.mkdir()
    for name in ("server.crt", "server.key", "ca.crt"):
        (pem / name).write_text(f"-----BEGIN TEST {name}-----\n-----END TEST {name}-----\n")
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    base = {"grafana_admin_password": ADMIN_PASSWORD, **local}
    hosts = {
        "plain": dict(base),
        "https": {
            **base,
            "grafana_tls_cert_file": str(pem / "server.crt"),
            "grafana_tls_key_file": str(pem / "server.key"),
            "grafana_tls_min_version": "TLS1.3",
            "grafana_http_port": 3443,
            "grafana_domain": "mon-a01.primary.example.com",
            "grafana_prometheus_url": "https://mon-a01.primary.example.com:9090",
            "grafana_prometheus_ca_file": str(pem / "ca.crt"),
            "grafana_prometheus_basic_auth_user": "grafana",
            "grafana_prometheus_basic_auth_password": PROMETHEUS_PASSWORD,
            "__grafana_prometheus_ca_pem": (pem / "ca.crt").read_text(),
            "grafana_ini_extra": {"smtp": {"enabled": True, "host": "smtp.example.com:587", "password": "a;b#c"}},
            "grafana_dashboards_dir": "/srv/grafana/dashboards",
        },
    }
    for name, (values, _reason) in BAD.items():
        hosts[f"bad-{name}"] = {**base, **values}
    for name in hosts:
        (out / name).mkdir(parents=True)
    (work / "hosts.yml").write_text(yaml.safe_dump({"all": {"vars": defaults, "hosts": hosts}}))
    templates = sorted((ROLE / "templates").glob("*.j2"))
    names = repr([p.name.removesuffix(".j2") for p in templates])
    quoted = ", ".join(f"'{p}'" for p in templates)
    (work / "play.yml").write_text(RENDER_PLAY.format(role=ROLE, out=out, templates=quoted, names=names))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_NOCOLOR="1",
    )
    playbook = str(Path(sys.executable).parent / "ansible-playbook")
    cmd = [playbook, "-f", "8", "-i", str(work / "hosts.yml"), str(work / "play.yml")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    for host, files in json.loads((out / "rendered.json").read_text()).items():
        for name, text in files.items():
            (out / host / ("refused.txt" if name == "refused" else name)).write_text(text)
    return out


def ini(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(inline_comment_prefixes=None, interpolation=None)
    parser.read_string(path.read_text())
    return parser


def test_rendered_grafana_ini_plain(rendered):
    conf = ini(rendered / "plain" / "grafana.ini")
    assert conf["server"]["protocol"] == "http"
    assert conf["server"]["http_addr"] == "0.0.0.0"  # noqa: S104
    assert conf["server"]["http_port"] == "3000"
    assert conf["server"]["domain"] == "plain"
    assert "cert_file" not in conf["server"]
    assert "min_tls_version" not in conf["server"]
    assert conf["security"]["admin_user"] == "admin"
    assert conf["security"]["admin_password"] == "$__file{/etc/grafana/deepseek-admin-password}"  # noqa: S105
    assert conf["security"]["secret_key"] == "$__file{/etc/grafana/deepseek-secret-key}"  # noqa: S105
    assert conf["security"]["cookie_secure"] == "false"
    assert conf["auth.anonymous"]["enabled"] == "false"
    assert conf["users"]["allow_sign_up"] == "false"
    assert conf["analytics"]["reporting_enabled"] == "false"
    assert conf["analytics"]["check_for_updates"] == "false"
    assert conf["analytics"]["check_for_plugin_updates"] == "false"
    assert conf["snapshots"]["external_enabled"] == "false"


def test_rendered_grafana_ini_https_with_extra_settings(rendered):
    conf = ini(rendered / "https" / "grafana.ini")
    assert conf["server"]["protocol"] == "https"
    assert conf["server"]["http_port"] == "3443"
    assert conf["server"]["cert_file"] == "/etc/grafana/tls-server.crt"
    assert conf["server"]["cert_key"] == "/etc/grafana/tls-server.key"
    assert conf["server"]["min_tls_version"] == "TLS1.3"
    assert conf["server"]["domain"] == "mon-a01.primary.example.com"
    assert conf["security"]["cookie_secure"] == "true"
    assert conf["smtp"]["enabled"] == "true"
    assert conf["smtp"]["host"] == "smtp.example.com:587"
    assert conf["smtp"]["password"] == '"""a;b#c"""'  # noqa: S105 (go-ini reads triple quotes as a literal)


def test_no_secret_in_grafana_ini_or_the_provider(rendered):
    for host in ("plain", "https"):
        for name in ("grafana.ini", "dashboards.yaml"):
            text = (rendered / host / name).read_text()
            assert ADMIN_PASSWORD not in text
            assert "word-" not in text


def test_grafana_ini_is_no_log_when_the_extra_settings_hold_a_secret(rendered):
    # The https host's grafana_ini_extra has [smtp] password: its grafana.ini must not be shown in a diff.
    assert (rendered / "https" / "ini_extra_secret").read_text() == "True"
    assert (rendered / "plain" / "ini_extra_secret").read_text() == "False"
    tasks = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    task = next(t for t in tasks if t["name"] == "Write grafana.ini")
    assert "__grafana_ini_extra_secret" in str(task.get("no_log"))


def test_rendered_datasource(rendered):
    plain = yaml.safe_load((rendered / "plain" / "datasource.yaml").read_text())
    assert plain["apiVersion"] == 1
    assert plain["prune"] is True
    (source,) = plain["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "deepseek-prometheus"
    assert source["url"] == "http://127.0.0.1:9090"
    assert source["access"] == "proxy"
    assert source["isDefault"] is True
    assert source["editable"] is False
    assert source["jsonData"] == {"httpMethod": "POST", "timeInterval": "30s"}
    assert "secureJsonData" not in source
    assert "basicAuth" not in source

    https = yaml.safe_load((rendered / "https" / "datasource.yaml").read_text())
    (source,) = https["datasources"]
    assert source["url"] == "https://mon-a01.primary.example.com:9090"
    assert source["basicAuth"] is True
    assert source["basicAuthUser"] == "grafana"
    assert source["jsonData"]["tlsAuthWithCACert"] is True
    assert source["secureJsonData"]["tlsCACert"].startswith("-----BEGIN TEST ca.crt-----")
    # Grafana expands $VAR in provisioning files: every "$" is doubled.
    assert source["secureJsonData"]["basicAuthPassword"] == PROMETHEUS_PASSWORD.replace("$", "$$")


def test_dashboard_provider_reads_the_directory_the_role_fills(rendered):
    for host, directory in (("plain", "/var/lib/grafana/dashboards/deepseek"), ("https", "/srv/grafana/dashboards")):
        provider = yaml.safe_load((rendered / host / "dashboards.yaml").read_text())
        (entry,) = provider["providers"]
        assert entry["type"] == "file"
        assert entry["options"]["path"] == directory
        assert entry["folder"] == "DeepSeek"
        assert entry["allowUiUpdates"] is False
    # configure.yml copies every shipped dashboard into grafana_dashboards_dir, the provider's path.
    tasks = yaml.safe_load((ROLE / "tasks" / "configure.yml").read_text())
    copy = next(t for t in tasks if t["name"] == "Install the collection's dashboards")
    assert copy["ansible.builtin.copy"]["dest"].startswith("{{ grafana_dashboards_dir }}/")
    main_vars = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())
    assert "/files/dashboards/*.json" in main_vars["__grafana_dashboard_files"]


def test_the_provisioned_datasource_is_the_one_the_dashboards_select(rendered):
    source = yaml.safe_load((rendered / "plain" / "datasource.yaml").read_text())["datasources"][0]
    assert source["type"] == DATASOURCE["type"]
    assert source["isDefault"] is True  # the ${datasource} variable starts on the default data source


def test_good_hosts_were_not_refused(rendered):
    assert not (rendered / "plain" / "refused.txt").exists()
    assert not (rendered / "https" / "refused.txt").exists()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_naming_the_variable(rendered, case):
    refusal = rendered / f"bad-{case}" / "refused.txt"
    assert refusal.is_file(), f"{case} was accepted"
    message = refusal.read_text()
    for word in BAD[case][1]:
        assert word in message, message
    assert ADMIN_PASSWORD not in message
    assert not (rendered / f"bad-{case}" / "grafana.ini").exists()

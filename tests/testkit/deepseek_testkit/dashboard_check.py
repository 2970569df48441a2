"""Every panel query of the collection's Grafana dashboards, evaluated against a running Prometheus.

The dashboards (roles/grafana/files/dashboards/*.json) are only worth shipping if their queries find the
series the deployment exports: a renamed metric or label leaves a panel silently empty. This evaluates
every target of every panel, with Grafana's template variables replaced ($site and $node by regular
expressions that match every value, $__rate_interval by a fixed range), as an instant query through
Prometheus's HTTP API (/api/v1/query), and lists the targets that return no series or fail.

Queries over metrics that only a GPU host exports are not evaluated (the lab runs Triton on CPUs and no
dcgm-exporter): GPU_ONLY_METRICS lists them by metric name, and a target is GPU-only when one of the
metrics it reads matches. EMPTY_WHEN_HEALTHY lists the metrics that have no series while nothing is wrong
(ALERTS: no alert firing).

    python -m deepseek_testkit.dashboard_check --prometheus http://127.0.0.1:9090 [--set node=lab-primary-gpu1]

Only the Python standard library is used (urllib), so it runs wherever Python does.
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path

from deepseek_testkit import ROOT

DASHBOARDS = ROOT / "roles" / "grafana" / "files" / "dashboards"

# Metrics that exist only on a host with an NVIDIA GPU (full matches of metric names).
GPU_ONLY_METRICS: tuple[re.Pattern[str], ...] = (
    re.compile(r"DCGM_\w+"),  # dcgm-exporter: DCGM_FI_* fields and DCGM_EXP_* exporter metrics
    re.compile(r"nv_gpu_\w+|nv_energy_consumption"),  # Triton's GPU metrics (read through DCGM)
    re.compile(r"deepseek_gpus_\w+"),  # the dcgm_exporter role's textfile metric (GPUs expected)
)

# Metrics without series while everything is healthy.
EMPTY_WHEN_HEALTHY: tuple[str, ...] = ("ALERTS",)

# Grafana variables and the values they get here: every site and node, a rate range of four 30 s scrapes.
DEFAULT_SUBSTITUTIONS: dict[str, str] = {
    "site": ".+",
    "node": ".+",
    "gpu": ".+",
    "model": ".+",
    "mountpoint": ".+",
    "__rate_interval": "2m",
    "__interval": "30s",
    "__range": "1h",
}

# $name, ${name}, ${name:format} and [[name]] (Grafana's variable syntaxes).
_VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\$(\w+)|\[\[(\w+)(?::[\w-]+)?\]\]")
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not glued to a number (1e-3) and not called (a function or an aggregation).
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}
    | {"atan2", "inf", "nan", "Inf", "NaN"}
)


def substitute(expr: str, substitutions: dict[str, str] | None = None) -> str:
    """Replace Grafana's template variables in a query.

    Args:
        expr: a panel target's PromQL, as stored in the dashboard.
        substitutions: values that replace (or add to) DEFAULT_SUBSTITUTIONS, e.g. {"node": "lab-proxy"}.

    Returns:
        The query with every variable replaced.

    Raises:
        KeyError: the query uses a variable that has no value here.

    """
    values = {**DEFAULT_SUBSTITUTIONS, **(substitutions or {})}

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(3)
        if name not in values:
            raise KeyError(f"no value for the Grafana variable ${name} in: {expr}")
        return values[name]

    return _VARIABLE.sub(value, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (selectors' names, not functions, labels or keywords).

    Args:
        expr: PromQL, with or without Grafana variables (they sit in strings and ranges, which are dropped).

    Returns:
        The set of metric names.

    """
    text = _STRINGS.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    return {name for name in _IDENTIFIER.findall(text) if name not in _KEYWORDS}


def is_gpu_only(expr: str) -> bool:
    """True when the query reads a metric that only a GPU host exports (see GPU_ONLY_METRICS)."""
    return any(pattern.fullmatch(name) for name in metric_names(expr) for pattern in GPU_ONLY_METRICS)


def panel_targets(dashboard: dict) -> Iterator[tuple[str, str, str]]:
    """Every query of a dashboard: (panel title, refId, expr), panels nested in rows included."""

    def walk(panels: list[dict]) -> Iterator[dict]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for panel in walk(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield panel.get("title", ""), target.get("refId", ""), target["expr"]


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*)\)\s*$", re.DOTALL)


def variable_queries(dashboard: dict) -> Iterator[tuple[str, str, str]]:
    """The dashboard's query variables as PromQL: (variable name, query, label).

    Grafana fills a variable from ``label_values(<selector>, <label>)``; an empty result leaves its drop-down
    empty, and with it every panel that filters on the variable. ``label_values(<selector>, <label>)`` becomes
    ``count by (<label>) (<selector>)``, which has a series per value (and one without the label when some
    selected series lack it); ``label_values(<label>)`` (every series of the data source) is left out.
    """
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        definition = variable.get("query")
        if isinstance(definition, dict):
            definition = definition.get("query", "")
        match = _LABEL_VALUES.match(definition or "")
        if not match:
            continue
        args, depth, split = match.group(1), 0, -1
        for position, char in enumerate(args):
            if char in "({[":
                depth += 1
            elif char in ")}]":
                depth -= 1
            elif char == "," and depth == 0:
                split = position
        if split < 0:
            continue
        selector, label = args[:split].strip(), args[split + 1 :].strip()
        yield variable.get("name", ""), f"count by ({label}) ({selector})", label


def query(prometheus_url: str, expr: str, timeout: float = 30.0, context: ssl.SSLContext | None = None) -> dict:
    """One instant query through Prometheus's HTTP API; its "data" member (resultType, result).

    Raises:
        RuntimeError: Prometheus answered with an error (a bad query, a timeout) or not at all.

    """
    url = prometheus_url.rstrip("/") + "/api/v1/query"
    body = urllib.parse.urlencode({"query": expr}).encode()
    request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 (http(s) URL from the caller)
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
            answer = json.load(response)
    except urllib.error.HTTPError as error:
        try:
            answer = json.load(error)
        except ValueError:
            raise RuntimeError(f"HTTP {error.code} from {url}") from error
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise RuntimeError(f"no answer from {url}: {error}") from error
    if answer.get("status") != "success":
        raise RuntimeError(f"{answer.get('errorType', 'error')}: {answer.get('error', answer)}")
    return answer["data"]


def has_series(data: dict) -> bool:
    """Whether a query's data holds something to draw: a series, or a scalar/string value."""
    if data.get("resultType") in ("scalar", "string"):
        return True
    return bool(data.get("result"))


def empty_panels(
    prometheus_url: str,
    dashboards: list[Path],
    substitutions: dict,
    *,
    allowed_empty: Iterable[str] = EMPTY_WHEN_HEALTHY,
    context: ssl.SSLContext | None = None,
) -> list[str]:
    """The panel queries that return no series from a running Prometheus.

    Args:
        prometheus_url: base URL of the Prometheus server, e.g. http://127.0.0.1:9090.
        dashboards: Grafana dashboard JSON files.
        substitutions: Grafana variable values on top of DEFAULT_SUBSTITUTIONS ({"node": "lab-proxy"}).
        allowed_empty: metric names whose queries may be empty (default: EMPTY_WHEN_HEALTHY).
        context: TLS context for an https Prometheus (its CA), if any.

    Returns:
        One line per empty or failing query, "<dashboard> / <panel> [<refId>]: <query>" (a failing query
        ends with its error). The dashboard's query variables (label_values()) are evaluated too, as
        "<dashboard> / variable $<name> [query]". Queries over GPU-only metrics (GPU_ONLY_METRICS) are not
        evaluated.

    """
    allowed = set(allowed_empty)
    empty = []
    for path in dashboards:
        dashboard = json.loads(Path(path).read_text())
        variables = [(f"variable ${name}", "query", expr, label) for name, expr, label in variable_queries(dashboard)]
        targets = [(title, ref, expr, None) for title, ref, expr in panel_targets(dashboard)]
        for title, ref, expr, label in [*variables, *targets]:
            if is_gpu_only(expr) or metric_names(expr) & allowed:
                continue
            where = f"{dashboard.get('title', path)} / {title} [{ref}]"
            promql = substitute(expr, substitutions)
            one_line = " ".join(promql.split())
            try:
                data = query(prometheus_url, promql, context=context)
            except RuntimeError as error:
                empty.append(f"{where}: {one_line} -> {error}")
                continue
            if not has_series(data) or (label and not any(r["metric"].get(label) for r in data["result"])):
                empty.append(f"{where}: {one_line}")
    return empty


def gpu_only_panels(dashboards: list[Path]) -> list[str]:
    """The panel queries empty_panels() skips as GPU-only: "<dashboard> / <panel> [<refId>]"."""
    skipped = []
    for path in dashboards:
        dashboard = json.loads(Path(path).read_text())
        for title, ref, expr in panel_targets(dashboard):
            if is_gpu_only(expr):
                skipped.append(f"{dashboard.get('title', path)} / {title} [{ref}]")
    return skipped


def main(argv: list[str] | None = None) -> int:
    """Command line: print the empty panel queries; exit 1 when there are any."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--ca-file", help="CA bundle for an https Prometheus")
    parser.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="a Grafana variable's value (repeatable)"
    )
    parser.add_argument(
        "--allow-empty", action="append", default=[], metavar="METRIC", help="a metric whose queries may be empty"
    )
    parser.add_argument("dashboards", nargs="*", type=Path, help=f"dashboard files (default: {DASHBOARDS}/*.json)")
    args = parser.parse_args(argv)
    substitutions = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item}: expected NAME=VALUE")
        substitutions[name.lstrip("$")] = value
    dashboards = args.dashboards or sorted(DASHBOARDS.glob("*.json"))
    context = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    empty = empty_panels(
        args.prometheus,
        dashboards,
        substitutions,
        allowed_empty=[*EMPTY_WHEN_HEALTHY, *args.allow_empty],
        context=context,
    )
    skipped = gpu_only_panels(dashboards)
    print(f"{len(skipped)} GPU-only queries not evaluated (metrics matching {[p.pattern for p in GPU_ONLY_METRICS]})")
    for line in empty:
        print(f"EMPTY {line}")
    print(f"{len(empty)} panel queries without series")
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())

"""The Dockerfile, the nginx config and the Kubernetes manifests agree with the app."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from nexus.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def _instructions(text: str) -> list[tuple[str, str]]:
    """Parse a Dockerfile into (INSTRUCTION, arguments), joining continued lines."""
    joined = re.sub(r"\\\n\s*", " ", text)
    rows = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            rows.append((word.upper(), rest.strip()))
    return rows


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions((ROOT / "Dockerfile").read_text())


def _routes(app) -> set[str]:
    return {r.rule for r in app.url_map.iter_rules()}


def test_dockerfile_runs_gunicorn_with_the_project_config(dockerfile):
    cmd = [args for word, args in dockerfile if word == "CMD"][-1]
    assert yaml.safe_load(cmd) == ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    copied = " ".join(args for word, args in dockerfile if word == "COPY")
    assert "wsgi.py" in copied and "gunicorn.conf.py" in copied


def test_dockerfile_is_multi_stage_and_runs_as_a_non_root_user(dockerfile):
    stages = [args for word, args in dockerfile if word == "FROM"]
    assert len(stages) >= 2 and all("slim" in s for s in stages)
    users = [args for word, args in dockerfile if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    final_stage = dockerfile[max(i for i, (word, _) in enumerate(dockerfile) if word == "FROM"):]
    assert not any(word == "RUN" and re.search(r"\b(gcc|build-essential|apt-get install)\b", args) for word, args in final_stage)


def test_the_image_has_the_locale_text_models_name(dockerfile):
    build_stage = dockerfile[: max(i for i, (word, _) in enumerate(dockerfile) if word == "FROM")]
    assert any(word == "RUN" and "en_US.UTF-8" in args and "locale-gen" in args for word, args in build_stage)
    assert ("COPY", "--from=build /usr/lib/locale/locale-archive /usr/lib/locale/locale-archive") in dockerfile


def test_dockerfile_healthcheck_probes_a_real_route(app, dockerfile):
    check = [args for word, args in dockerfile if word == "HEALTHCHECK"][-1]
    path = re.search(r"https?://[^/'\"]+(/[\w/.-]*)", check).group(1)
    assert path in _routes(app)
    exposed = [args for word, args in dockerfile if word == "EXPOSE"]
    assert exposed == ["8080 8081"]  # HTTP, gRPC
    assert any(word == "VOLUME" and "/models" in args for word, args in dockerfile)


def test_dockerignore_keeps_the_build_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", "tests"} <= set(ignored)


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    docs = []
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _gunicorn_setting(name: str):
    """Read a literal setting from gunicorn.conf.py without running it (it sets up metrics dirs)."""
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not set in gunicorn.conf.py")


def _kind(manifests, kind):
    found = [d for d in manifests if d["kind"] == kind]
    assert found, f"no {kind} in deploy/k8s"
    return found[0]


def test_deployment_probes_name_real_routes_and_the_container_port(app, manifests):
    deployment = _kind(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert ports["http"] == int(env["PORT"]) == 8080
    assert ports["grpc"] == int(env["NEXUS_GRPC_PORT"]) == 8081
    assert container["livenessProbe"]["grpc"] == {"port": ports["grpc"], "service": ""}  # the process serves gRPC
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "readinessProbe")}
    assert probes["readinessProbe"]["path"] == probes["startupProbe"]["path"] == "/health/ready"
    for probe in probes.values():
        assert probe["path"] in _routes(app)
        assert probe["port"] in ports or probe["port"] in ports.values()


def test_deployment_outlives_the_graceful_timeout_and_is_not_root(manifests):
    spec = _kind(manifests, "Deployment")["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > _gunicorn_setting("graceful_timeout")
    assert spec["securityContext"]["runAsNonRoot"] is True
    container = spec["containers"][0]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert mounts["models"] == env["NEXUS_MODEL_DIR"]


def test_pvc_is_read_write_many_and_matches_the_deployment(manifests):
    pvc = _kind(manifests, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = _kind(manifests, "Deployment")["spec"]["template"]["spec"]
    claim = [v for v in spec["volumes"] if v["name"] == "models"][0]["persistentVolumeClaim"]["claimName"]
    assert claim == pvc["metadata"]["name"]


def test_service_targets_the_http_and_grpc_ports_and_is_scraped_by_prometheus(app, manifests):
    service = _kind(manifests, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http", "grpc"]
    deployment = _kind(manifests, "Deployment")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in _routes(app)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_nginx_body_limit_matches_the_upload_limit():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    limit = re.search(r"client_max_body_size\s+(\d+)m;", conf).group(1)
    assert int(limit) == Settings().max_upload_mb
    assert "X-Request-ID" in conf and "keepalive" in conf


# -- Prometheus alerting rules and the Grafana dashboard ------------------------------------------
# Every metric and label their PromQL names must be one the server exports: the metric objects of
# nexus.observability.metrics, the series its custom collectors compute (COMPUTED_SERIES), and
# Prometheus's own `up`. The live twin (tests/live/test_alerts_dashboard.py) runs them for real.

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "model-nexus.json"
TARGET_LABELS = frozenset({"job", "instance"})  # added by Prometheus to every series it scrapes

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<variable>\$\{\w+(?::\w+)?\}|\$\w+)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
  | (?P<name>[A-Za-z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}@])
""", re.VERBOSE)

PROMQL_AGGREGATORS = frozenset({
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile",
    "limitk", "limit_ratio",
})
PROMQL_FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh", "avg_over_time", "ceil", "changes",
    "clamp", "clamp_max", "clamp_min", "cos", "cosh", "count_over_time", "day_of_month", "day_of_week", "day_of_year",
    "days_in_month", "deg", "delta", "deriv", "double_exponential_smoothing", "exp", "floor", "histogram_avg", "histogram_count",
    "histogram_fraction", "histogram_quantile", "histogram_stddev", "histogram_stdvar", "histogram_sum", "holt_winters", "hour",
    "idelta", "increase", "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2", "mad_over_time",
    "max_over_time", "min_over_time", "minute", "month", "pi", "predict_linear", "present_over_time", "quantile_over_time", "rad",
    "rate", "resets", "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc", "sort_desc", "sqrt",
    "stddev_over_time", "stdvar_over_time", "sum_over_time", "tan", "tanh", "time", "timestamp", "vector", "year",
})
PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end"})
_GROUPING = frozenset({"by", "without"})
_MATCHING = frozenset({"on", "ignoring", "group_left", "group_right"})
_SAMPLES = {  # a metric object's type → the series it exports: (suffix, labels besides its own)
    "counter": (("_total", frozenset()),),
    "gauge": (("", frozenset()),),
    "histogram": (("_bucket", frozenset({"le"})), ("_sum", frozenset()), ("_count", frozenset())),
    "summary": (("_sum", frozenset()), ("_count", frozenset()), ("", frozenset({"quantile"}))),
    "info": (("_info", frozenset()),),
}


def exported_series() -> dict[str, frozenset[str] | None]:
    """Every series name the server exports → its labels (None: not known, a computed series named without them)."""
    from prometheus_client.metrics import MetricWrapperBase

    from nexus.observability import metrics

    series: dict[str, frozenset[str] | None] = {"up": frozenset()}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            labels = frozenset(value._labelnames)
            if getattr(value, "_multiprocess_mode", "") in ("all", "liveall"):
                labels |= {"pid"}  # a gauge kept per process: the multiprocess collector labels each series with its pid
            kinds = _SAMPLES if value._type != "enum" else {"enum": (("", frozenset({value._name})),)}
            for suffix, extra in kinds[value._type]:
                series[value._name + suffix] = labels | extra
    computed = getattr(metrics, "COMPUTED_SERIES", ())
    if isinstance(computed, dict):  # name → label names: their labels are checked too (a bucket's `le` goes without saying)
        series.update({name: frozenset(labels) | ({"le"} if name.endswith("_bucket") else set()) for name, labels in computed.items()})
    else:
        series.update({name: None for name in computed if name not in series})
    return series


class PromQL:
    """What one PromQL expression refers to, read by a tokenizer (no full parser).

    ``metrics``: the metric names selected; ``label_uses``: (metric, label) for every label a
    selector matches on or a ``by``/``without`` clause names over that metric (``on``/``ignoring``
    count for every metric of the expression); ``aggregations``: per aggregation operator, its
    clause (``by``, ``without`` or None) and labels, and the metrics it aggregates.
    """

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = []
        position = 0
        while position < len(expr):
            match = _TOKEN.match(expr, position)
            assert match, f"cannot read PromQL at {expr[position:position + 20]!r} in {expr!r}"
            if match.lastgroup not in ("space", "comment"):
                self.tokens.append((match.lastgroup, match.group()))
            position = match.end()
        self.metrics: set[str] = set()
        self.label_uses: set[tuple[str | None, str]] = set()
        self.aggregations: list[tuple[str | None, tuple[str, ...], set[str]]] = []
        self._read()

    def _text(self, i: int) -> str | None:
        return self.tokens[i][1] if 0 <= i < len(self.tokens) else None

    def _close(self, i: int) -> int:
        """The index of the bracket that closes the one at ``i``."""
        opening = self.tokens[i][1]
        closing = {"(": ")", "{": "}"}[opening]
        depth = 0
        for j in range(i, len(self.tokens)):
            depth += {opening: 1, closing: -1}.get(self.tokens[j][1], 0)
            if depth == 0:
                return j
        raise AssertionError(f"unbalanced {opening!r} in {self.expr!r}")

    def _labels(self, i: int) -> tuple[tuple[str, ...], int]:
        """The label list in the parentheses opening at ``i``, and the index after them."""
        assert self._text(i) == "(", f"a label list should follow at token {i} of {self.expr!r}"
        end = self._close(i)
        return tuple(text for kind, text in self.tokens[i + 1:end] if kind == "name"), end + 1

    def _read(self) -> None:
        metric_at: dict[int, str] = {}
        scopes: list[tuple[str | None, tuple[str, ...], int, int]] = []  # aggregations: clause, labels, argument's brackets
        matching: list[str] = []
        skip: dict[int, int] = {}  # a clause read with its aggregation → the index after its labels
        i = 0
        while i < len(self.tokens):
            if i in skip:
                i = skip[i]
                continue
            kind, text = self.tokens[i]
            if text == "{":
                end = self._close(i)
                metric = metric_at.get(i - 1)
                for j in range(i + 1, end):
                    if self.tokens[j][0] == "name" and self._text(j + 1) in ("=", "!=", "=~", "!~"):
                        self.label_uses.add((metric, self.tokens[j][1]))
                i = end + 1
                continue
            if kind != "name":
                i += 1
                continue
            word = text.lower()
            if text in PROMQL_AGGREGATORS:
                clause, labels, after = None, (), i + 1
                if (self._text(i + 1) or "").lower() in _GROUPING:  # sum by (a) (x)
                    clause = self._text(i + 1).lower()
                    labels, after = self._labels(i + 2)
                argument = (after, self._close(after))
                if clause is None and (self._text(argument[1] + 1) or "").lower() in _GROUPING:  # sum (x) by (a)
                    clause = self._text(argument[1] + 1).lower()
                    labels, skip[argument[1] + 1] = self._labels(argument[1] + 2)
                scopes.append((clause, labels, *argument))
                i = after
                continue
            if word in _GROUPING or word in _MATCHING:
                if self._text(i + 1) == "(":
                    labels, after = self._labels(i + 1)
                    if word in _MATCHING:
                        matching.extend(labels)
                    i = after
                else:
                    i += 1
                continue
            if text in PROMQL_FUNCTIONS or word in PROMQL_KEYWORDS:
                i += 1
                continue
            assert self._text(i + 1) != "(", f"unknown PromQL function {text!r} in {self.expr!r}"
            metric_at[i] = text
            i += 1
        self.metrics = set(metric_at.values())
        for label in matching:
            self.label_uses.update((metric, label) for metric in self.metrics)
        for clause, labels, start, end in scopes:
            inside = {name for at, name in metric_at.items() if start < at < end}
            self.aggregations.append((clause, labels, inside))
            self.label_uses.update((metric, label) for metric in inside for label in labels)

    def result_labels(self, series: dict[str, frozenset[str] | None]) -> frozenset[str] | None:
        """The labels the expression's result carries (None: unknown); good enough for alert expressions."""
        def own(metric):
            labels = series.get(metric)
            return None if labels is None else labels | TARGET_LABELS

        if not self.aggregations:
            kept = [own(metric) for metric in self.metrics]
            return None if None in kept else frozenset().union(*kept)
        result = None
        for clause, labels, inside in self.aggregations:
            if clause == "by":
                kept = frozenset(labels)
            elif clause == "without":
                owned = [own(metric) for metric in inside]
                if None in owned:
                    return None
                kept = frozenset().union(*owned) - set(labels)
            else:
                kept = frozenset()
            result = kept if result is None else result & kept
        return result


def unknown_references(expr: str, series: dict[str, frozenset[str] | None]) -> list[str]:
    """What ``expr`` names that the server does not export: metrics, and labels a metric does not have."""
    query = PromQL(expr)
    problems = [f"metric {name}" for name in sorted(query.metrics - set(series))]
    for metric, label in sorted(query.label_uses, key=str):
        if metric is None or metric not in series or series[metric] is None or label == "__name__":
            continue
        if label not in series[metric] | TARGET_LABELS:
            problems.append(f"label {label} of {metric}")
    return problems


def test_promql_reader_finds_metrics_and_labels():
    query = PromQL('histogram_quantile(0.99, sum by (le, model_id) (rate(x_bucket{model_id=~"$model_id", version=~"${v}"}[$__rate_interval])))'
                   ' / on (model_id) group_left sum(y_total offset 5m) by (model_id) > bool 1e-3 and max without (job) (z)')
    assert query.metrics == {"x_bucket", "y_total", "z"}
    assert {("x_bucket", "model_id"), ("x_bucket", "version"), ("x_bucket", "le"), ("y_total", "model_id"), ("z", "job"),
            ("z", "model_id")} <= query.label_uses
    assert ("y_total", "le") not in query.label_uses
    assert [(clause, labels) for clause, labels, _ in query.aggregations] == [("by", ("le", "model_id")), ("by", ("model_id",)),
                                                                            ("without", ("job",))]
    assert PromQL("max(models_loaded) == 0").result_labels({"models_loaded": frozenset()}) == frozenset()
    assert PromQL('up{job=~".*nexus.*"} == 0').result_labels({"up": frozenset()}) == TARGET_LABELS
    with pytest.raises(AssertionError, match="unknown PromQL function"):
        PromQL("sum(ratee(x[5m]))")
    series = {"a_total": frozenset({"model_id"})}
    assert unknown_references('sum by (model_id, version) (rate(a_total{status="x"}[5m])) / b', series) == [
        "metric b", "label status of a_total", "label version of a_total"]


@pytest.fixture(scope="module")
def alert_rules() -> list[dict]:
    document = yaml.safe_load(ALERTS.read_text())
    assert [group["name"] for group in document["groups"]] == ["model-nexus"]
    return document["groups"][0]["rules"]


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of the dashboard: its panels' targets (rows' panels too) and its variables' selectors."""
    queries = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            queries.extend(target["expr"] for target in inner.get("targets", []))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            selector, label = _label_values(variable)
            queries.append(f"count by ({label}) ({selector})")
    return queries


def _label_values(variable: dict) -> tuple[str, str]:
    query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
    match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
    assert match, f"variable {variable['name']}: expected label_values(selector, label), got {query!r}"
    return match.group(1), match.group(2)


def _missing_hint(problems: list[str]) -> str:
    return ("not exported by nexus.observability.metrics (metric objects, COMPUTED_SERIES): " + "; ".join(problems)) if problems else ""


def test_alert_rules_have_the_expected_shape(alert_rules):
    names = [rule["alert"] for rule in alert_rules]
    assert {"ModelDriftAlert", "ModelDriftWarning", "ModelConfidenceDrop", "ModelErrorRate", "NoModelsLoaded", "ModelAccuracyLow",
            "ModelRecordsDropped"} <= set(names)
    assert len(names) == len(set(names))
    for rule in alert_rules:
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip(), rule["alert"]


def test_alert_rules_use_only_exported_metrics_and_labels(alert_rules):
    series = exported_series()
    problems = [f"{rule['alert']}: {problem}" for rule in alert_rules for problem in unknown_references(rule["expr"], series)]
    assert not problems, _missing_hint(problems)


def test_alert_annotations_name_only_labels_the_alert_carries(alert_rules):
    series = exported_series()
    for rule in alert_rules:
        carried = PromQL(rule["expr"]).result_labels(series)
        if carried is None:
            continue  # a computed series named without its labels
        for text in rule["annotations"].values():
            used = set(re.findall(r"\$labels\.(\w+)", text))
            assert used <= carried, f"{rule['alert']} names {sorted(used - carried)}; its alerts carry only {sorted(carried)}"


def test_dashboard_imports_through_grafana_with_a_prometheus_input(dashboard):
    assert dashboard["schemaVersion"] == 39 and dashboard["uid"] and dashboard["id"] is None
    inputs = {item["name"]: item for item in dashboard["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource" and inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"

    def references(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"]
            for value in node.values():
                yield from references(value)
        elif isinstance(node, list):
            for value in node:
                yield from references(value)

    sources = [ref for ref in references(dashboard) if ref.get("type") != "grafana"]
    assert sources and all(ref == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for ref in sources)


def test_dashboard_panels_and_variables(dashboard):
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["type"] == "row" or panel["targets"], panel["title"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert {"model_id", "version"} <= set(variables)
    assert _label_values(variables["model_id"]) == ("model_predictions_total", "model_id")
    for query in dashboard_queries(dashboard):
        for name in re.findall(r"\$\{?(\w+)", query):
            assert name.startswith("__") or name in variables, f"undeclared variable ${name} in {query!r}"
    by_query = {target["expr"]: panel for panel in panels for target in panel.get("targets", [])}
    drift = next(panel for query, panel in by_query.items() if "model_feature_drift" in query and 'method="psi"' in query)
    assert [step["value"] for step in drift["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [None, 0.1, 0.25]
    assert drift["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    status = next(panel for query, panel in by_query.items() if "model_drift_status" in query)
    assert status["type"] == "stat"
    mapped = {value: option["text"] for mapping in status["fieldConfig"]["defaults"]["mappings"] for value, option in mapping["options"].items()}
    assert mapped == {"0": "ok", "1": "warn", "2": "alert"}


def test_dashboard_panels_do_not_overlap(dashboard):
    cells = {}
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[x, y]!r}"
                cells[x, y] = panel["title"]


def test_dashboard_has_the_feedback_panels(dashboard):
    """Labels sent to POST /models/<id>/feedback: accuracy, labels by outcome, a regressor's error, records dropped."""
    panels = {panel["title"]: panel for panel in dashboard["panels"]}
    exprs = {title: " ".join(target["expr"] for target in panel.get("targets", [])) for title, panel in panels.items()}
    accuracy = panels["Accuracy (labels)"]
    assert accuracy["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert 'model_feedback_total{outcome="correct"' in exprs["Accuracy (labels)"] and "[1h]" in exprs["Accuracy (labels)"]
    assert PromQL(exprs["Accuracy (labels)"]).aggregations[0][:2] == ("by", ("model_id", "version"))
    assert "sum by (model_id, version, outcome) (rate(model_feedback_total" in exprs["Labels received"]
    assert {"model_feedback_abs_error_sum", "model_feedback_abs_error_count"} <= PromQL(exprs["Regression error"]).metrics
    assert PromQL(exprs["Records dropped"]).metrics == {"model_records_dropped_total"}
    row = panels["Feedback"]
    assert row["type"] == "row" and all(panels[title]["gridPos"]["y"] > row["gridPos"]["y"] for title in
                                        ("Accuracy (labels)", "Labels received", "Regression error", "Records dropped"))


def test_dashboard_uses_only_exported_metrics_and_labels(dashboard):
    series = exported_series()
    problems = [f"{query!r}: {problem}" for query in dashboard_queries(dashboard) for problem in unknown_references(query, series)]
    assert not problems, _missing_hint(problems)

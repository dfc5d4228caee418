"""The alerting rules and the Grafana dashboard (deploy/) against promtool and a real Prometheus scraping the real gunicorn.

promtool checks the rules file and runs unit tests of each rule on synthetic series (the
thresholds, the ``for`` durations, the sums over replicas, the annotations as rendered). A real
Prometheus loading the file evaluates every rule against the live server's series, and runs every
query of the dashboard. tests/test_deploy.py checks, without running anything, that the names
they use are the server's.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from datetime import datetime

import pytest
import requests
import yaml

from tests.live.server import metric_samples, predict, running_prometheus, upload
from tests.live.test_shared_weights_live import mlp
from tests.test_deploy import ALERTS, DASHBOARD, PromQL, dashboard_queries

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is not installed (Debian package prometheus)")

GROUP = "model-nexus"
IRIS = (5.1, 3.5, 1.4, 0.2)
EVICTED = (16, 256, 256, 4)  # an MLP of 0.3 MB of float32 weights: measured above the budget of the eviction test
# The series the server exports as soon as it has answered predictions, successes and errors:
# every dashboard query on these alone must return something.
TRAFFIC_SERIES = frozenset({
    "http_requests_total", "http_request_duration_seconds_bucket", "model_predictions_total",
    "model_inference_duration_seconds_bucket", "models_loaded",
})


def alert_rules() -> list[dict]:
    return yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]


# -- promtool ---------------------------------------------------------------------------------------

@needs_promtool
def test_promtool_checks_the_rules():
    result = subprocess.run([PROMTOOL, "check", "rules", str(ALERTS)], check=False, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def render(template: str, labels: dict[str, str], value: float) -> str:
    """Render an annotation as Prometheus does, for the template forms alerts.yml uses."""
    def one(match: re.Match) -> str:
        action = match.group(1)
        if found := re.fullmatch(r"\$labels\.(\w+)", action):
            return labels.get(found.group(1), "")
        if action == "$value | humanizePercentage":
            return f"{value * 100:.4g}%"
        if found := re.fullmatch(r'\$value \| printf "(%[^"]*)"', action):
            return found.group(1) % value
        raise AssertionError(f"this test cannot render {{{{ {action} }}}}: teach render() the new form")

    return re.sub(r"\{\{\s*(.*?)\s*\}\}", one, template)


def expect(alertname: str, eval_time: str, firing: list[tuple[dict[str, str], float]]) -> dict:
    """A promtool alert_rule_test: at ``eval_time`` exactly these alerts fire, each (its labels, the value it carries)."""
    rule = next(rule for rule in alert_rules() if rule["alert"] == alertname)
    alerts = []
    for labels, value in firing:
        annotations = {name: render(text, labels, value) for name, text in rule["annotations"].items()}
        alerts.append({"exp_labels": {**rule["labels"], **labels}, "exp_annotations": annotations})
    return {"eval_time": eval_time, "alertname": alertname, "exp_alerts": alerts}


def series(name: str, values: str, **labels: str) -> dict:
    selector = ", ".join(f'{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{selector}}}", "values": values}


DAY = 24 * 60  # minutes

RULE_TESTS = [
    {   # Drift: the worst verdict over replicas, held long enough.
        "interval": "1m",
        "input_series": [
            series("model_drift_status", "2x20", model_id="m", version="1", instance="a"),
            series("model_drift_status", "0x20", model_id="m", version="1", instance="b"),
            series("model_drift_status", "1x40", model_id="w", version="2", instance="a"),
            series("model_drift_status", "0x40", model_id="ok", version="1", instance="a"),
        ],
        "alert_rule_test": [
            expect("ModelDriftAlert", "9m", []),
            expect("ModelDriftAlert", "11m", [({"model_id": "m", "version": "1"}, 2)]),
            expect("ModelDriftWarning", "11m", []),
            expect("ModelDriftWarning", "29m", []),
            expect("ModelDriftWarning", "31m", [({"model_id": "w", "version": "2"}, 1)]),
        ],
    },
    {   # Errors: 10% of model "bad" over its two replicas, 1% of "good".
        "interval": "1m",
        "input_series": [
            series("model_predictions_total", "0+1x30", model_id="bad", version="1", status="error", instance="a"),
            series("model_predictions_total", "0+4x30", model_id="bad", version="1", status="success", instance="a"),
            series("model_predictions_total", "0+5x30", model_id="bad", version="2", status="success", instance="b"),
            series("model_predictions_total", "0+1x30", model_id="good", version="1", status="error", instance="a"),
            series("model_predictions_total", "0+99x30", model_id="good", version="1", status="success", instance="a"),
        ],
        "alert_rule_test": [
            expect("ModelErrorRate", "8m", []),
            expect("ModelErrorRate", "16m", [({"model_id": "bad"}, 0.1)]),
        ],
    },
    {   # Confidence: a day at 0.9, then two hours at 0.5; "busy" answers 600 an hour, "quiet" 60 (too few to judge).
        "interval": "1m",
        "input_series": [
            series("model_prediction_confidence_sum", f"0+9x{DAY} {9 * DAY + 5}+5x119", model_id="busy", version="1", instance="a"),
            series("model_prediction_confidence_count", f"0+10x{DAY + 120}", model_id="busy", version="1", instance="a"),
            series("model_prediction_confidence_sum", f"0+0.9x{DAY} {0.9 * DAY + 0.5}+0.5x119", model_id="quiet", version="1", instance="a"),
            series("model_prediction_confidence_count", f"0+1x{DAY + 120}", model_id="quiet", version="1", instance="a"),
        ],
        "alert_rule_test": [
            expect("ModelConfidenceDrop", f"{DAY - 10}m", []),
            expect("ModelConfidenceDrop", f"{DAY + 10}m", []),
            expect("ModelConfidenceDrop", f"{DAY + 120}m", [({"model_id": "busy", "version": "1"}, 0.5)]),
        ],
    },
    {   # No models: no replica has one that can answer.
        "interval": "1m",
        "input_series": [series("models_available", "0x10", instance="a"), series("models_available", "0x10", instance="b")],
        "alert_rule_test": [expect("NoModelsLoaded", "4m", []), expect("NoModelsLoaded", "6m", [({}, 0)])],
    },
    {   # One replica with models is enough.
        "interval": "1m",
        "input_series": [series("models_available", "0x10", instance="a"), series("models_available", "1x10", instance="b")],
        "alert_rule_test": [expect("NoModelsLoaded", "6m", [])],
    },
    {   # Under a memory budget no worker has a model open before its first request: none loaded, 3 available.
        "interval": "1m",
        "input_series": [
            series("models_loaded", "0x10", instance="a"), series("models_loaded", "0x10", instance="b"),
            series("models_available", "3x10", instance="a"), series("models_available", "3x10", instance="b"),
        ],
        "alert_rule_test": [expect("NoModelsLoaded", "6m", []), expect("NoModelsLoaded", "10m", [])],
    },
    {   # Evictions per minute, by replica: "a" 40, for 40 minutes; "b" and "d" 20 each (40 together, but the
        # threshold is per replica); "c" 60 for 10 minutes only (past 30 over 10 minutes for about 10, short of 15).
        "interval": "1m",
        "input_series": [
            series("model_evictions_total", "0+40x40", instance="a"),
            series("model_evictions_total", "0+20x40", instance="b"),
            series("model_evictions_total", "0x10 0+60x10 600x20", instance="c"),
            series("model_evictions_total", "0+20x40", instance="d"),
        ],
        "alert_rule_test": [
            expect("ModelEvictionsHigh", "7m", []),
            expect("ModelEvictionsHigh", "22m", []),  # "a" past 30 since minute 8: pending
            expect("ModelEvictionsHigh", "25m", [({"instance": "a"}, 40)]),
            expect("ModelEvictionsHigh", "40m", [({"instance": "a"}, 40)]),
        ],
    },
    {   # A replica down, in the nexus job only.
        "interval": "1m",
        "input_series": [
            series("up", "0x5", job="model-nexus", instance="a:8080"),
            series("up", "1x5", job="model-nexus", instance="b:8080"),
            series("up", "0x5", job="node", instance="c:9100"),
        ],
        "alert_rule_test": [
            expect("ModelNexusDown", "1m", []),
            expect("ModelNexusDown", "3m", [({"job": "model-nexus", "instance": "a:8080"}, 0)]),
        ],
    },
    {   # Accuracy of the labels: "bad" 70% over its two replicas, "good" 90%, "perfect" never wrong (no incorrect
        # series at all), "wrong" never right (no correct series at all), "quiet" 50% on 36 labels in 6 h (too few).
        "interval": "1m",
        "input_series": [
            series("model_feedback_total", "0+4x60", model_id="bad", version="1", outcome="correct", instance="a"),
            series("model_feedback_total", "0+1x60", model_id="bad", version="1", outcome="incorrect", instance="a"),
            series("model_feedback_total", "0+3x60", model_id="bad", version="1", outcome="correct", instance="b"),
            series("model_feedback_total", "0+2x60", model_id="bad", version="1", outcome="incorrect", instance="b"),
            series("model_feedback_total", "0+9x60", model_id="good", version="1", outcome="correct", instance="a"),
            series("model_feedback_total", "0+1x60", model_id="good", version="1", outcome="incorrect", instance="a"),
            series("model_feedback_total", "0+10x60", model_id="perfect", version="2", outcome="correct", instance="a"),
            series("model_feedback_total", "0+5x60", model_id="wrong", version="3", outcome="incorrect", instance="a"),
            series("model_feedback_total", "0+0.05x480", model_id="quiet", version="1", outcome="correct", instance="a"),
            series("model_feedback_total", "0+0.05x480", model_id="quiet", version="1", outcome="incorrect", instance="a"),
        ],
        "alert_rule_test": [
            expect("ModelAccuracyLow", "10m", []),
            expect("ModelAccuracyLow", "40m", [({"model_id": "bad", "version": "1"}, 0.7), ({"model_id": "wrong", "version": "3"}, 0)]),
            expect("ModelAccuracyLow", "470m", []),  # "quiet": 50% of 36 labels in the last 6 hours
        ],
    },
    {   # Records dropped: replica "a" drops 10 between minutes 10 and 15, "b" none.
        "interval": "1m",
        "input_series": [
            series("model_records_dropped_total", "0x10 2+2x4 10x30", instance="a"),
            series("model_records_dropped_total", "0x45", instance="b"),
        ],
        "alert_rule_test": [
            expect("ModelRecordsDropped", "9m", []),
            expect("ModelRecordsDropped", "15m", [({"instance": "a"}, 10)]),
            expect("ModelRecordsDropped", "30m", []),  # none in the last 10 minutes
        ],
    },
]


@needs_promtool
def test_promtool_unit_tests_of_every_rule(tmp_path):
    tested = {case["alertname"] for test in RULE_TESTS for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in alert_rules()}, "every rule has a unit test here"
    document = {"rule_files": [str(ALERTS)], "evaluation_interval": "1m", "tests": RULE_TESTS}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(document, sort_keys=False))
    result = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=tmp_path, check=False, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# -- a real Prometheus ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prometheus(live, tmp_path_factory):
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    with running_prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{live.port}", [ALERTS]) as url:
        yield url


def query(url: str, expression: str) -> dict:
    """Run an instant query; return Prometheus's whole answer (status, data or error)."""
    return requests.get(f"{url}/api/v1/query", params={"query": expression}, timeout=5).json()


def vector(url: str, expression: str) -> list[dict]:
    answer = query(url, expression)
    assert answer["status"] == "success", f"{expression}: {answer}"
    return answer["data"]["result"]


def wait_for(check, timeout: float = 15, every: float = 0.25, what: str = "a condition"):
    """Call ``check`` until it returns something truthy; return that, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def group_rules(url: str) -> dict[str, dict]:
    groups = requests.get(f"{url}/api/v1/rules", timeout=5).json()["data"]["groups"]
    return {rule["name"]: rule for group in groups if group["name"] == GROUP for rule in group["rules"]}


def evaluated_at(rule: dict) -> float:
    """When Prometheus last evaluated ``rule`` (Unix time; 0 if never)."""
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", rule["lastEvaluation"])  # Python reads microseconds, Prometheus writes nanoseconds
    moment = datetime.fromisoformat(stamp)
    return max(moment.timestamp(), 0.0)


def active_alerts(url: str, alertname: str) -> list[dict]:
    alerts = requests.get(f"{url}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
    return [alert for alert in alerts if alert["labels"]["alertname"] == alertname]


def predictions_seen(url: str) -> dict[str, float]:
    result = vector(url, 'sum by (status) (model_predictions_total{model_id="iris"})')
    return {sample["metric"]["status"]: float(sample["value"][1]) for sample in result}


@pytest.fixture(scope="module")
def traffic(live, prometheus) -> dict[str, int]:
    """Successful and failed predictions on iris, made in two rounds with scrapes between and after them, so that
    rate() over the counters sees both outcomes go up. Returns how many of each the server answered."""
    made = {"success": 0, "error": 0}

    def send(successes: int, errors: int) -> None:
        for _ in range(successes):
            assert predict(live, features=IRIS).status_code == 200
        for _ in range(errors):
            assert predict(live, features=IRIS[:3]).status_code == 400  # three features where iris takes four
        made["success"] += successes
        made["error"] += errors

        def scraped():
            seen = predictions_seen(prometheus)
            return all(seen.get(status, 0) >= count for status, count in made.items())

        wait_for(scraped, what=f"Prometheus to scrape {made} predictions")

    send(1, 1)  # the series exist from here on
    send(10, 10)
    time.sleep(1.5)  # one more scrape at the same values: every [1m] window holds two samples after the increase
    return made


def test_prometheus_loads_and_evaluates_every_rule(prometheus):
    names = [rule["alert"] for rule in alert_rules()]

    def all_evaluated():
        rules = group_rules(prometheus)
        return rules if set(rules) == set(names) and all(evaluated_at(rule) > 0 for rule in rules.values()) else None

    rules = wait_for(all_evaluated, timeout=20, what=f"Prometheus to evaluate every rule of {GROUP}")
    for name, rule in rules.items():
        assert rule["type"] == "alerting", name
        assert rule["health"] == "ok" and not rule.get("lastError"), f"{name}: {rule}"


def test_no_models_loaded_stays_quiet_while_a_model_is_served(prometheus):
    available = wait_for(lambda: vector(prometheus, "max(models_available) >= 1"), what="Prometheus to scrape models_available")
    assert float(available[0]["value"][1]) >= 1
    seen = time.time()
    rule = wait_for(lambda: (r := group_rules(prometheus).get("NoModelsLoaded")) and evaluated_at(r) > seen and r,
                    what="an evaluation of NoModelsLoaded after the scrape")
    assert rule["health"] == "ok" and rule["state"] == "inactive", rule
    assert active_alerts(prometheus, "NoModelsLoaded") == []


def test_no_models_loaded_goes_pending_when_the_last_model_is_deleted(make_server, tmp_path):
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    server = make_server(workers=1)  # the demo model only
    with running_prometheus(tmp_path / "prometheus", f"127.0.0.1:{server.port}", [ALERTS]) as url:
        wait_for(lambda: vector(url, "max(models_available) == 1"), what="Prometheus to scrape models_available 1")
        assert requests.delete(server.url("/models/iris"), timeout=10).status_code == 200
        wait_for(lambda: vector(url, "max(models_available) == 0"), what="Prometheus to scrape models_available 0")
        alerts = wait_for(lambda: active_alerts(url, "NoModelsLoaded"), what="NoModelsLoaded to go pending")
        assert [alert["state"] for alert in alerts] == ["pending"]  # it fires after 5 minutes of this


def test_a_server_that_starts_without_models_exports_models_available_and_loaded_0(make_server, tmp_path):
    (tmp_path / "empty").mkdir()
    server = make_server(model_dir=tmp_path / "empty", workers=1)
    time.sleep(1.5)  # the loader has looked at the directory
    samples = metric_samples(server)
    assert samples.get(("models_available", frozenset())) == 0
    assert samples.get(("models_loaded", frozenset())) == 0


def test_no_models_loaded_stays_quiet_under_a_memory_budget_before_any_request(make_server, tmp_path):
    """Under NEXUS_MEMORY_BUDGET_MB a worker opens a model on its first request: before one, every replica has
    models_loaded 0 (what the rule read before), but the demo model is available, so NoModelsLoaded stays quiet."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    server = make_server(workers=2, env={"NEXUS_MEMORY_BUDGET_MB": "64"})
    with running_prometheus(tmp_path / "prometheus", f"127.0.0.1:{server.port}", [ALERTS]) as url:
        wait_for(lambda: vector(url, "max(models_loaded) == 0 and max(models_available) == 1"),
                 what="Prometheus to scrape models_loaded 0 and models_available 1")
        assert vector(url, "max(models_loaded) == 0")  # the former expression: it would have gone pending
        seen = time.time()
        rule = wait_for(lambda: (r := group_rules(url).get("NoModelsLoaded")) and evaluated_at(r) > seen and r,
                        what="an evaluation of NoModelsLoaded after the scrape")
        assert rule["health"] == "ok" and rule["state"] == "inactive", rule
        assert active_alerts(url, "NoModelsLoaded") == []
        assert vector(url, "max(models_loaded) == 0")  # still nothing open: no request came


def without_threshold(alertname: str) -> str:
    """A rule's expression without its final comparison (`... > 30`): the value it compares, for every series."""
    expression = next(rule["expr"] for rule in alert_rules() if rule["alert"] == alertname)
    bare, count = re.subn(r"\s*>\s*[\d.]+\s*$", "", expression)
    assert count == 1, expression
    return bare


def test_eviction_rule_and_panels_see_a_replica_closing_models(make_server, tmp_path):
    """Two uploaded models of 0.3 MB of weights and a budget smaller than either: each one the single worker opens
    closes the other (iris would not do: its weights are too small for its measured size to be above 0.0 MB).
    ModelEvictionsHigh's expression (before its threshold) sees the replica's evictions, and every query of the
    "Models and memory" row has series, the load time a number."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian package prometheus)")
    (tmp_path / "models").mkdir()
    server = make_server(model_dir=tmp_path / "models", workers=1, env={"NEXUS_MEMORY_BUDGET_MB": "0.01"})
    with running_prometheus(tmp_path / "prometheus", f"127.0.0.1:{server.port}", [ALERTS]) as url:
        wait_for(lambda: vector(url, "sum(model_evictions_total) == 0"), what="Prometheus to scrape model_evictions_total 0")
        for seed, name in enumerate(("a", "b")):  # rate() counts from the 0 scraped: the increase comes after it
            response = upload(server, mlp(seed, EVICTED), name)
            assert response.status_code == 201, response.text
        for name in ("a", "b", "a", "b"):
            response = predict(server, model_id=name, features=[0.5] * EVICTED[0])
            assert response.status_code == 200, response.text
        samples = metric_samples(server)
        evictions = samples[("model_evictions_total", frozenset())]
        assert evictions >= 3, samples  # every prediction above opened the model the one before closed
        assert samples[("models_available", frozenset())] == 2 and samples[("models_loaded", frozenset())] == 1
        wait_for(lambda: vector(url, f"sum(model_evictions_total) >= {evictions}"), what=f"Prometheus to scrape {evictions} evictions")
        time.sleep(1.5)  # one more scrape at the same values

        per_minute = vector(url, without_threshold("ModelEvictionsHigh"))
        assert [sample["metric"] for sample in per_minute] == [{"instance": f"127.0.0.1:{server.port}"}]
        assert float(per_minute[0]["value"][1]) > 0
        assert active_alerts(url, "ModelEvictionsHigh") == []  # a few, not 30 a minute

        queries = [grafana_to_promql(q) for q in dashboard_queries(json.loads(DASHBOARD.read_text()))]
        row = [q for q in queries if PromQL(q).metrics & MODEL_SERIES]
        for promql in row:
            result = vector(url, promql)
            assert result, f"no series for {promql!r}"
            if "model_load_duration_seconds_bucket" in promql or "model_evictions_total" in promql:
                assert all(float(s["value"][1]) > 0 for s in result), (promql, result)  # NaN is not > 0
        memory = vector(url, "models_memory_bytes")
        assert [s["metric"]["pid"] for s in memory] == [str(pid) for pid in server.worker_pids()]
        assert float(memory[0]["value"][1]) > 0  # the open model, as measured at upload


def test_error_rate_rule_sees_the_failed_predictions(prometheus, traffic):
    expression = next(rule["expr"] for rule in alert_rules() if rule["alert"] == "ModelErrorRate")
    result = vector(prometheus, expression)
    share = {sample["metric"]["model_id"]: float(sample["value"][1]) for sample in result}
    assert set(share) == {"iris"}
    assert 0.05 < share["iris"] < 1  # 11 errors in 22 predictions, as rate() extrapolates them
    alerts = wait_for(lambda: active_alerts(prometheus, "ModelErrorRate"), what="ModelErrorRate to go pending")
    assert [(alert["labels"]["model_id"], alert["state"]) for alert in alerts] == [("iris", "pending")]


def grafana_to_promql(expression: str) -> str:
    """Replace the dashboard's variables as Grafana would with every model and version chosen."""
    expression = re.sub(r"\$\{?__rate_interval\}?|\$\{?__interval\}?", "1m", expression)
    return re.sub(r"\$\{?(model_id|version)\}?", ".*", expression)


def test_every_dashboard_query_runs_and_the_traffic_ones_return_series(prometheus, traffic):
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    failed, empty = [], []
    for expression in queries:
        promql = grafana_to_promql(expression)
        assert "$" not in promql, f"a variable is left in {promql!r}"
        answer = query(prometheus, promql)
        if answer["status"] != "success":
            failed.append(f"{promql!r}: {answer.get('error')}")
        elif not answer["data"]["result"] and PromQL(promql).metrics <= TRAFFIC_SERIES:
            empty.append(promql)
    assert not failed, "queries Prometheus rejects:\n" + "\n".join(failed)
    assert not empty, "queries on the traffic series that return nothing:\n" + "\n".join(empty)
    covered = [q for q in queries if PromQL(q).metrics <= TRAFFIC_SERIES]
    assert len(covered) >= 6, covered  # request rate, two latencies, errors, inference p99, the variables
    assert sum("model_predictions_total" in q for q in covered) >= 3


# The series of the "Models and memory" row (and of "Models loaded"): the server exports them from its start.
MODEL_SERIES = frozenset({
    "models_available", "models_loaded", "models_memory_bytes", "model_loads_total", "model_evictions_total",
    "model_load_duration_seconds_bucket",
})


def test_the_models_and_memory_panels_show_the_live_servers_models(live, prometheus):
    """Without a budget every worker opens every model at start: available and loaded agree, one memory series per
    worker. Every query of the row returns series (the load time NaN here: no load within its window)."""
    queries = [grafana_to_promql(q) for q in dashboard_queries(json.loads(DASHBOARD.read_text()))]
    watched = [q for q in queries if PromQL(q).metrics and PromQL(q).metrics <= MODEL_SERIES]
    assert len(watched) >= 7, watched  # available, loaded (twice), memory, loads, evictions, load time p50 and p95
    for promql in watched:
        assert wait_for(lambda: vector(prometheus, promql), what=f"series for {promql!r}")
    available = vector(prometheus, "max(models_available)")
    loaded = vector(prometheus, "max(models_loaded)")
    assert float(available[0]["value"][1]) >= 1 and float(loaded[0]["value"][1]) == float(available[0]["value"][1])
    pids = {str(pid) for pid in live.worker_pids()}
    wait_for(lambda: {s["metric"]["pid"] for s in vector(prometheus, "models_memory_bytes")} == pids,
             what=f"a models_memory_bytes series for each worker {sorted(pids)}")


CLASSIFIER_SERIES = frozenset({
    "model_prediction_confidence_bucket", "model_prediction_confidence_sum", "model_prediction_confidence_count",
    "model_predicted_class_total",
})


def test_the_confidence_panels_show_the_demo_classifier(prometheus, traffic):
    """Model monitoring reads iris's class probabilities: the confidence and class panels have its series."""
    queries = [grafana_to_promql(q) for q in dashboard_queries(json.loads(DASHBOARD.read_text()))]
    watched = [q for q in queries if PromQL(q).metrics and PromQL(q).metrics <= CLASSIFIER_SERIES]
    assert len(watched) >= 3, watched  # mean confidence, its distribution, the predicted classes
    for promql in watched:
        assert vector(prometheus, promql), f"no series for {promql!r}"
    classes = vector(prometheus, 'sum by (model_id, class) (model_predicted_class_total{model_id="iris"})')
    assert 0 < sum(float(sample["value"][1]) for sample in classes) <= traffic["success"]  # answered ones only


def test_the_dashboards_traffic_panels_show_what_was_sent(prometheus, traffic):
    errors = vector(prometheus, 'sum(increase(model_predictions_total{model_id=~".*", status="error"}[1m]))')
    assert errors and float(errors[0]["value"][1]) > 0
    by_endpoint = vector(prometheus, "sum by (endpoint, status) (rate(http_requests_total[1m]))")
    assert {("/predict", "200"), ("/predict", "400")} <= {(s["metric"]["endpoint"], s["metric"]["status"]) for s in by_endpoint}


FEEDBACK_SERIES = frozenset({"model_feedback_total"})


def send_labels(live, model_id: str, truths: list[str]) -> list[dict]:
    """Predict IRIS once per truth, then send the truths as feedback until every one is matched; returns the items."""
    ids = [predict(live, model_id=model_id, features=IRIS).json()["request_id"] for _ in truths]
    matched: dict[str, dict] = {}

    def all_matched():
        waiting = [(i, truth) for i, truth in zip(ids, truths) if i not in matched]
        response = requests.post(live.url(f"/models/{model_id}/feedback"), json=[{"request_id": i, "truth": t} for i, t in waiting],
                                 timeout=10)
        assert response.status_code == 200, response.text
        matched.update({item["request_id"]: item for item in response.json()["items"] if item["outcome"] == "matched"})
        return len(matched) == len(ids)

    wait_for(all_matched, timeout=10, every=0.2, what="the predictions to be recorded and their labels matched")
    return [matched[i] for i in ids]


def test_the_accuracy_panels_show_the_labels_sent(live, prometheus, iris_bytes):
    """Labels sent for a classifier of its own (the traffic tests count iris alone): right and wrong ones, in two
    rounds with scrapes between, so that rate() sees both outcomes go up; the feedback panels then show them."""
    assert upload(live, iris_bytes, "iris_labels").status_code == 201
    sent = []

    def seen():
        result = vector(prometheus, 'sum(model_feedback_total{model_id="iris_labels"})')
        return result and float(result[0]["value"][1]) >= len(sent)

    for _ in range(2):
        sent += send_labels(live, "iris_labels", ["0", "1"])  # iris answers IRIS with class 0: one right, one wrong
        wait_for(seen, what=f"Prometheus to scrape {len(sent)} labels")
    time.sleep(1.5)  # one more scrape at the same values
    assert [item["correct"] for item in sent] == [True, False, True, False]
    queries = [grafana_to_promql(q) for q in dashboard_queries(json.loads(DASHBOARD.read_text()))]
    labelled = [q for q in queries if PromQL(q).metrics and PromQL(q).metrics <= FEEDBACK_SERIES]
    assert len(labelled) >= 2, labelled  # the accuracy, the labels by outcome
    for promql in labelled:
        result = [s for s in vector(prometheus, promql) if s["metric"].get("model_id") == "iris_labels"]
        assert result, f"no series of iris_labels for {promql!r}"
    accuracy = next(q for q in labelled if 'outcome="correct"' in q)
    [sample] = [s for s in vector(prometheus, accuracy) if s["metric"]["model_id"] == "iris_labels"]
    assert sample["metric"] == {"model_id": "iris_labels", "version": "1"}
    assert 0 < float(sample["value"][1]) < 1  # a half, as rate() extrapolates each outcome
    by_outcome = vector(prometheus, 'sum by (outcome) (model_feedback_total{model_id="iris_labels"})')
    assert {s["metric"]["outcome"]: float(s["value"][1]) for s in by_outcome} == {"correct": 2, "incorrect": 2}

"""nexus.routing on its own: checking a routing document, and the plan that picks a version per request."""

from __future__ import annotations

import random
import zlib

import pytest

from nexus import routing
from nexus.errors import BadInput
from nexus.routing import BUCKETS, Plan, Routing, bucket, parse

VERSIONS = ["v1", "v2", "v3"]
EXAMPLE = {"default": "v1", "canary": {"v2": 10}, "shadow": {"v3": 100}}  # the issue's example
KEYS = 100_000


def random_keys(count: int = KEYS, seed: int = 7) -> list[str]:
    """Routing keys like a client's user or session ids, the same on every run."""
    rng = random.Random(seed)
    return [f"user-{rng.getrandbits(64):016x}" for _ in range(count)]


@pytest.fixture(scope="module")
def keys() -> list[str]:
    return random_keys()


# -- parse --------------------------------------------------------------------------------------


def test_the_issues_example_is_accepted_as_written():
    found = parse(EXAMPLE, VERSIONS)
    assert found == Routing("v1", {"v2": 10}, {"v3": 100})
    assert found.document() == EXAMPLE


@pytest.mark.parametrize(
    "document",
    [
        {},
        {"default": None},
        {"default": "v2"},
        {"canary": {"v2": 0}},
        {"canary": {"v1": 100}},
        {"canary": {"v1": 40, "v2": 60}},  # exactly 100 % to canaries
        {"canary": {"v2": 12.5}, "shadow": {"v3": 0.01}},
        {"default": "v1", "canary": {}, "shadow": {}},
        {"default": "v1", "canary": None, "shadow": None},
        {"shadow": {"v1": 100, "v2": 100, "v3": 100}},  # shadows do not add up: each is a copy
    ],
)
def test_valid_documents_are_accepted(document):
    found = parse(document, VERSIONS)
    assert found.default == document.get("default")
    assert dict(found.canary) == (document.get("canary") or {})
    assert dict(found.shadow) == (document.get("shadow") or {})


def test_an_empty_document_means_the_newest_answers():
    assert parse({}, VERSIONS) == Routing()
    assert parse({}, VERSIONS).document() == {"default": None, "canary": {}, "shadow": {}}


REFUSED = [
    ({"default": "v9"}, ["'v9'", "default", "does not exist", "'v1', 'v2', 'v3'"]),
    ({"canary": {"v9": 10}}, ["'v9'", "canary", "does not exist", "'v1', 'v2', 'v3'"]),
    ({"shadow": {"v9": 10}}, ["'v9'", "shadow", "does not exist", "'v1', 'v2', 'v3'"]),
    ({"canary": {"v2": -1}}, ["canary weight", "'v2'", "from 0 to 100", "got -1"]),
    ({"canary": {"v2": 101}}, ["canary weight", "'v2'", "from 0 to 100", "got 101"]),
    ({"canary": {"v2": 100.5}}, ["canary weight", "from 0 to 100"]),
    ({"canary": {"v2": "10"}}, ["canary weight", "a number", "got '10'"]),
    ({"canary": {"v2": True}}, ["canary weight", "a number", "got True"]),
    ({"canary": {"v2": None}}, ["canary weight", "a number", "got None"]),
    ({"canary": {"v2": [10]}}, ["canary weight", "a number"]),
    ({"shadow": {"v3": -1}}, ["shadow weight", "'v3'", "from 0 to 100", "got -1"]),
    ({"shadow": {"v3": 101}}, ["shadow weight", "'v3'", "got 101"]),
    ({"shadow": {"v3": "10"}}, ["shadow weight", "got '10'"]),
    ({"shadow": {"v3": True}}, ["shadow weight", "got True"]),
    ({"shadow": {"v3": None}}, ["shadow weight", "got None"]),
    ({"canary": {"v1": 60, "v2": 50}}, ["canary weights add up to 110 %", "at most 100 %"]),
    ({"default": "v3", "canary": {"v1": 60, "v2": 50}}, ["add up to 110 %"]),
    ({"default": "v1", "weights": {"v2": 10}}, ["unknown field", "'weights'", "default, canary, shadow"]),
    ({"Default": "v1"}, ["unknown field", "'Default'"]),
    ({"default": "v1", "canary": {"v1": 10}}, ["'v1'", "both as default and as canary"]),
    ({"default": "v1", "shadow": {"v1": 10}}, ["'v1'", "both as default and as shadow"]),
    ({"default": 1}, ["'default'", "must be a version (a string)"]),
    ({"default": ["v1"]}, ["'default'", "must be a version"]),
    ({"canary": ["v2"]}, ["'canary'", "must be an object"]),
    ({"canary": "v2"}, ["'canary'", "must be an object"]),
    ({"shadow": 10}, ["'shadow'", "must be an object"]),
    ([], ["must be a JSON object"]),
    ("v1", ["must be a JSON object"]),
    (None, ["must be a JSON object"]),
    (10, ["must be a JSON object"]),
]


@pytest.mark.parametrize(("document", "words"), REFUSED)
def test_every_refusal_is_bad_input_naming_the_problem(document, words):
    with pytest.raises(BadInput) as raised:
        parse(document, VERSIONS)
    assert raised.value.status == 400 and raised.value.code == "bad_input"
    for word in words:
        assert word in raised.value.message, (word, raised.value.message)


def test_weight_bounds_are_inclusive():
    assert parse({"canary": {"v2": 0}, "shadow": {"v3": 100}}, VERSIONS).shadow == {"v3": 100}
    assert parse({"canary": {"v2": 100}}, VERSIONS).canary == {"v2": 100}
    assert parse({"canary": {"v2": 0.0}}, VERSIONS).canary == {"v2": 0.0}


def test_without_versions_existence_is_not_checked_but_the_rest_is():
    document = {"default": "gone", "canary": {"old": 10}, "shadow": {"older": 50}}
    assert parse(document, None) == Routing("gone", {"old": 10}, {"older": 50})
    with pytest.raises(BadInput, match="unknown field"):
        parse({"default": "gone", "extra": 1}, None)
    with pytest.raises(BadInput, match="from 0 to 100"):
        parse({"canary": {"old": 101}}, None)
    with pytest.raises(BadInput, match="add up to 110"):
        parse({"canary": {"a": 60, "b": 50}}, None)
    with pytest.raises(BadInput, match="both as default and as shadow"):
        parse({"default": "gone", "shadow": {"gone": 1}}, None)


def test_a_model_without_versions_names_none_in_the_message():
    with pytest.raises(BadInput) as raised:
        parse({"default": "v1"}, [])
    assert "'v1' as default, which does not exist" in raised.value.message


def test_names_says_whether_the_routing_mentions_a_version():
    found = parse(EXAMPLE, VERSIONS)
    assert all(found.names(v) for v in VERSIONS)
    assert not found.names("v4")
    assert not Routing().names("v1")


# -- bucket -------------------------------------------------------------------------------------


def test_bucket_is_a_stable_crc32_of_the_key():
    # Hard-coded: a change of the hash would move every sticky client to another version.
    assert BUCKETS == 10_000
    assert bucket("user-42") == 2435 == zlib.crc32(b"user-42") % BUCKETS
    assert bucket("user-42", b"v3") == 6434 == zlib.crc32(b"v3user-42") % BUCKETS
    assert [bucket("user-42") for _ in range(5)] == [2435] * 5


def test_bucket_takes_any_string():
    for key in ["", "ünï", "\ud800", "x" * 10_000]:
        assert 0 <= bucket(key) < BUCKETS
        assert bucket(key) == bucket(key)
    assert bucket("ünï") == zlib.crc32("ünï".encode()) % BUCKETS


def test_bucket_without_a_key_is_random_in_range():
    seen = {bucket(None) for _ in range(2000)}
    assert all(0 <= b < BUCKETS for b in seen)
    assert len(seen) > 1000


# -- Plan: which version answers -------------------------------------------------------------


def test_without_a_default_the_newest_answers():
    plan = Plan(Routing(), VERSIONS)
    assert plan.default == "v3"
    assert {plan.choose(None) for _ in range(100)} == {"v3"}
    assert plan.choose("user-42") == "v3"
    assert plan.shares() == {"v3": 100.0}
    assert plan.shadows_for("v3", "user-42") == []


def test_the_default_named_answers_all_traffic_without_canaries():
    plan = Plan(parse({"default": "v1"}, VERSIONS), VERSIONS)
    assert plan.default == "v1"
    assert {plan.choose(k) for k in random_keys(1000)} == {"v1"}
    assert plan.shares() == {"v1": 100.0}


def test_a_default_that_no_longer_exists_falls_back_to_the_newest():
    plan = Plan(parse({"default": "gone"}, None), ["v1", "v2"])
    assert plan.default == "v2"
    assert plan.choose("user-42") == "v2"


def test_a_plan_without_versions_chooses_none():
    plan = Plan(Routing(), [])
    assert plan.default is None and plan.choose("k") is None and plan.choose(None) is None
    assert plan.shares() == {}


def test_choose_is_deterministic_for_a_key_across_plans(keys):
    routing_ = parse({"default": "v1", "canary": {"v2": 30, "v3": 20}}, VERSIONS)
    first, second = Plan(routing_, VERSIONS), Plan(parse(routing_.document(), VERSIONS), VERSIONS)
    sample = keys[:2000]
    chosen = [first.choose(k) for k in sample]
    assert chosen == [first.choose(k) for k in sample]  # again, same plan
    assert chosen == [second.choose(k) for k in sample]  # another worker's plan of the same routing
    assert set(chosen) == {"v1", "v2", "v3"}


def test_canaries_own_the_first_buckets_in_name_order(keys):
    # Given in reverse order: the buckets follow the sorted names, not the document's order.
    plan = Plan(parse({"default": "v1", "canary": {"v3": 20, "v2": 10}}, VERSIONS), VERSIONS)
    for key in keys[:5000]:
        position = bucket(key)
        expected = "v2" if position < 1000 else "v3" if position < 3000 else "v1"
        assert plan.choose(key) == expected, (key, position)


@pytest.mark.parametrize("weight", [0.5, 10, 33.33, 50, 90])
def test_the_canary_share_of_many_keys_is_its_weight(keys, weight):
    plan = Plan(parse({"default": "v1", "canary": {"v2": weight}}, VERSIONS), VERSIONS)
    share = sum(plan.choose(k) == "v2" for k in keys) * 100 / len(keys)
    # 100,000 keys: the binomial's standard deviation is at most 0.16 points; 0.6 is about 4 of them.
    assert abs(share - weight) < 0.6, share


def test_the_canary_share_without_keys_is_its_weight():
    plan = Plan(parse({"default": "v1", "canary": {"v2": 10}}, VERSIONS), VERSIONS)
    share = sum(plan.choose(None) == "v2" for _ in range(KEYS)) * 100 / KEYS
    assert abs(share - 10) < 0.6, share


def test_two_canaries_and_the_default_split_the_traffic(keys):
    plan = Plan(parse({"default": "v3", "canary": {"v1": 25, "v2": 15}}, VERSIONS), VERSIONS)
    counts = {v: 0 for v in VERSIONS}
    for key in keys:
        counts[plan.choose(key)] += 1
    assert abs(counts["v1"] * 100 / KEYS - 25) < 0.6
    assert abs(counts["v2"] * 100 / KEYS - 15) < 0.6
    assert abs(counts["v3"] * 100 / KEYS - 60) < 0.6
    assert plan.shares() == {"v1": 25.0, "v2": 15.0, "v3": 60.0}


def test_a_canary_of_100_percent_takes_all_traffic(keys):
    plan = Plan(parse({"default": "v1", "canary": {"v2": 100}}, VERSIONS), VERSIONS)
    assert {plan.choose(k) for k in keys[:5000]} == {"v2"}
    assert {plan.choose(None) for _ in range(1000)} == {"v2"}
    assert plan.shares() == {"v2": 100.0, "v1": 0.0}


def test_weights_of_zero_give_no_traffic(keys):
    plan = Plan(parse({"default": "v1", "canary": {"v2": 0}, "shadow": {"v3": 0}}, VERSIONS), VERSIONS)
    assert plan.canaries == () and plan.shadows == ()
    assert {plan.choose(k) for k in keys[:5000]} == {"v1"}
    assert all(plan.shadows_for("v1", k) == [] for k in keys[:5000])
    assert plan.shares() == {"v1": 100.0}


def test_canaries_and_shadows_of_missing_versions_are_dropped(keys):
    document = {"default": "v1", "canary": {"gone": 50, "v2": 10}, "shadow": {"vanished": 100}}
    plan = Plan(parse(document, None), ["v1", "v2"])
    assert [v for _, v in plan.canaries] == ["v2"]
    assert plan.shadows == ()
    chosen = {plan.choose(k) for k in keys[:5000]}
    assert chosen == {"v1", "v2"}
    assert plan.shares() == {"v2": 10.0, "v1": 90.0}
    assert all(plan.shadows_for(plan.choose(k), k) == [] for k in keys[:1000])


def test_a_canary_that_is_the_implicit_default_is_dropped(keys):
    # No default named: the newest (v3) answers, so a canary on v3 moves nothing.
    plan = Plan(parse({"canary": {"v3": 40}}, VERSIONS), VERSIONS)
    assert plan.default == "v3" and plan.canaries == ()
    assert {plan.choose(k) for k in keys[:2000]} == {"v3"}
    assert plan.shares() == {"v3": 100.0}


def test_the_routing_is_kept_as_given_in_the_plan():
    routing_ = parse(EXAMPLE, VERSIONS)
    assert Plan(routing_, VERSIONS).routing is routing_


# -- Plan: shares ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "shares"),
    [
        ({}, {"v3": 100.0}),
        (EXAMPLE, {"v2": 10.0, "v1": 90.0}),
        ({"default": "v2", "canary": {"v1": 0.01}}, {"v1": 0.01, "v2": 99.99}),
        ({"default": "v2", "canary": {"v1": 12.5, "v3": 37.5}}, {"v1": 12.5, "v3": 37.5, "v2": 50.0}),
    ],
)
def test_shares_are_each_versions_percent_of_routed_traffic(document, shares):
    found = Plan(parse(document, VERSIONS), VERSIONS).shares()
    assert found == pytest.approx(shares)
    assert sum(found.values()) == pytest.approx(100.0)


# -- Plan: shadows --------------------------------------------------------------------------------


def test_shadows_for_never_returns_the_served_version(keys):
    plan = Plan(parse({"default": "v1", "canary": {"v2": 50}, "shadow": {"v2": 100, "v3": 100}}, VERSIONS), VERSIONS)
    for key in keys[:5000]:
        served = plan.choose(key)
        shadows = plan.shadows_for(served, key)
        assert served not in shadows
        assert shadows == (["v3"] if served == "v2" else ["v2", "v3"])


@pytest.mark.parametrize("weight", [1, 25, 50, 75])
def test_shadows_sample_by_weight(keys, weight):
    plan = Plan(parse({"default": "v1", "shadow": {"v3": weight}}, VERSIONS), VERSIONS)
    share = sum(plan.shadows_for("v1", k) == ["v3"] for k in keys) * 100 / len(keys)
    assert abs(share - weight) < 0.6, share
    without_key = sum(plan.shadows_for("v1", None) == ["v3"] for _ in range(KEYS)) * 100 / KEYS
    assert abs(without_key - weight) < 0.6, without_key


def test_a_shadow_of_100_percent_gets_every_request(keys):
    plan = Plan(parse(EXAMPLE, VERSIONS), VERSIONS)
    assert all(plan.shadows_for(plan.choose(k), k) == ["v3"] for k in keys[:5000])
    assert all(plan.shadows_for("v1", None) == ["v3"] for _ in range(1000))


def test_shadow_sampling_is_sticky_per_key_and_independent_of_the_canary_bucket(keys):
    plan = Plan(parse({"default": "v1", "canary": {"v2": 50}, "shadow": {"v3": 50}}, VERSIONS), VERSIONS)
    assert [plan.shadows_for("v1", k) for k in keys[:2000]] == [plan.shadows_for("v1", k) for k in keys[:2000]]
    # The shadow hash is salted with the version: among the canary's keys, about half are shadowed too.
    canary_keys = [k for k in keys if plan.choose(k) == "v2"]
    shadowed = sum(plan.shadows_for("v2", k) == ["v3"] for k in canary_keys) * 100 / len(canary_keys)
    assert abs(shadowed - 50) < 1.5, shadowed
    assert all((plan.shadows_for("v1", k) == ["v3"]) == (bucket(k, b"v3") < 5000) for k in keys[:5000])


def test_two_shadows_are_sampled_independently(keys):
    plan = Plan(parse({"default": "v1", "shadow": {"v2": 50, "v3": 50}}, VERSIONS), VERSIONS)
    both = sum(plan.shadows_for("v1", k) == ["v2", "v3"] for k in keys) * 100 / len(keys)
    assert abs(both - 25) < 0.8, both


def test_the_module_exposes_what_the_registry_uses():
    assert routing.BUCKETS == BUCKETS and routing.parse is parse and routing.Plan is Plan

"""Plans from the config file's ``[plans.NAME]`` tables: what the operator typed is checked,
never stored as given."""

from __future__ import annotations

import tomllib

import pytest

from lamplighter.exceptions import ConfigError
from lamplighter.traffic.plans import DEFAULT_PLANS, plans_from_config


def plans(toml: str) -> dict[str, object]:
    return tomllib.loads(toml)["plans"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("toml", "said"),
    [
        (
            '[plans.free]\nmodels = "smollm2-135m-instruct"\n',
            "[plans.free]: 'models' must be a list of strings, not 'smollm2-135m-instruct'",
        ),
        ('[plans.free]\nmodels = ["a", 1]\n', "'models' must be a list of strings, not ['a', 1]"),
        ("[plans.free]\npriority = 1.5\n", "[plans.free]: 'priority' must be an integer, not 1.5"),
        ("[plans.free]\npriority = true\n", "'priority' must be an integer, not True"),
        (
            '[plans.gold]\nbrowser_only = "false"\n',
            "[plans.gold]: 'browser_only' must be true or false, not 'false'",
        ),
        (
            '[plans.free]\nrequests_per_minute = "10"\n',
            "[plans.free]: 'requests_per_minute' must be an integer, not '10'",
        ),
        ("[plans.free]\ncurrency = 5\n", "[plans.free]: 'currency' must be a string, not 5"),
        ('[plans.free]\nttft_slo_s = "2"\n', "'ttft_slo_s' must be a number, not '2'"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_line_naming_plan_field_and_value(
    toml: str, said: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        plans_from_config(plans(toml))
    assert said in str(refused.value)
    assert "\n" not in str(refused.value)


def test_values_of_the_right_type_are_taken_an_integer_for_a_number_too() -> None:
    plan = plans_from_config(
        plans('[plans.gold]\nmodels = ["m"]\nqueue_patience_s = 60\nbrowser_only = true\n')
    )["gold"]
    assert plan.models == ("m",)
    assert plan.queue_patience_s == 60.0 and isinstance(plan.queue_patience_s, float)
    assert plan.browser_only is True


@pytest.mark.parametrize("name", ["my plan", "-free", "ünicode", "x" * 65])
def test_a_plan_name_the_admin_api_would_refuse_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="is no plan name"):
        plans_from_config({name: {}})


def test_an_unknown_field_is_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown plan fields: rpm; known: .*, requests_per_"):
        plans_from_config(plans("[plans.free]\nrpm = 10\n"))
    assert plans_from_config({})["free"] == DEFAULT_PLANS["free"]

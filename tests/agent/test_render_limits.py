"""Limits on rendering (issue 12, point 2): a template past a limit fails its own letter with the
limit and the line named, quickly and without eating the agent's memory; the next letter renders."""

from __future__ import annotations

import email
import email.policy
import resource
import time

import pytest

from tests.template_bombs import BOMBS, DATA_LOOPS
from worker_agent.render import Renderer, RenderError

from .conftest import make_campaign, make_recipient

BYE = "\nUnsubscribe: {{ unsubscribe_url }}\n"


@pytest.mark.parametrize("name", BOMBS)
def test_a_template_past_a_limit_fails_its_letter_naming_the_limit_and_line(name: str) -> None:
    line, limit = BOMBS[name]
    renderer = Renderer()
    bomb = make_campaign(id=1, text="Hello {{ name }},\n" + line + BYE, html=None)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    with pytest.raises(RenderError) as caught:
        renderer.render(bomb, make_recipient(1))
    assert time.perf_counter() - start < 1.0
    reason = caught.value.reason
    assert reason.startswith("text template, line 2: "), reason
    assert limit in reason, reason
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # KiB: no big allocation
    letter = renderer.render(make_campaign(id=2), make_recipient(2))  # the next letter is built as ever
    assert b"Ann 2" in letter.data


def test_loops_sized_by_a_field_fail_only_the_letter_that_asks_for_too_many() -> None:
    renderer = Renderer()
    campaign = make_campaign(text="Hi\n" + DATA_LOOPS + BYE, html="<p>" + DATA_LOOPS + "</p>" + BYE)
    with pytest.raises(RenderError) as caught:
        renderer.render(campaign, make_recipient(1, fields={"n": "100000"}))
    assert caught.value.reason.startswith("text template, line 2: the template repeats loops more than 100,000 times")
    letter = renderer.render(campaign, make_recipient(2, fields={"n": "3"}))
    assert b"xxxxxxxxx" in letter.data


def test_a_letter_past_its_cpu_time_stops_at_one_second() -> None:
    burn = '{% set big = "x" * 1000000 %}{% for a in range(100000) %}{% if "y" in big %}!{% endif %}{% endfor %}'
    start = time.thread_time()
    with pytest.raises(RenderError) as caught:
        Renderer().render(make_campaign(text="Hi\n" + burn + BYE, html=None), make_recipient(1))
    assert "line 2: the letter took more than 1 s of CPU time" in caught.value.reason
    assert time.thread_time() - start < 1.5


def test_ordinary_loops_and_arithmetic_stay_allowed() -> None:
    text = ("{% for a in range(300) %}{% for b in range(300) %}{% endfor %}{% endfor %}"
            "{{ 2**4000 > 1 }} {{ ('ab' * 1000) | length }} {{ 10**10**10 == 10**100 }} {{ (10 ** 20) * (10 ** 20) }}"
            "{% set ns = namespace(total=0) %}{% for a in range(1000) %}{% set ns.total = ns.total + a %}{% endfor %}"
            "{{ ns.total }} {{ [1, 2] * 3 }} {{ '%05d' % 42 }} {{ 'x'.ljust(20) | length }}" + BYE)
    letter = Renderer().render(make_campaign(text=text, html=None), make_recipient(1))
    shown = email.message_from_bytes(letter.data, policy=email.policy.default).get_content()
    assert f"True 2000 True {10 ** 40}499500 [1, 2, 1, 2, 1, 2] 00042 20" in shown


# Found by trying to get around the limits: each is refused quickly, with little memory.
BIG = '{% set big = "x" * 1000000 %}'
DETOURS = {
    "slices kept in a list": BIG + "{% set ns = namespace(l=[]) %}{% for i in range(100000) %}"
                                   "{% set _ = ns.l.append(big[i:]) %}{% endfor %}{{ ns.l | length }}",
    "format width": '{{ "{:>999999999}".format(1) }}',
    "printf width": '{{ "%0999999999d" % 1 }}',
    "one text joined a million times": BIG + '{{ (range(100000) | map(attribute="x", default=big) | list) | join }}',
    "a dict of long texts printed": BIG + "{{ dict.fromkeys(range(100000), big) }}",
    "doubling with ~": '{% set ns = namespace(s="x") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}',
    "ljust": '{{ "x".ljust(10**9) }}',
    "to_bytes": '{{ (2).to_bytes(10**9, "big") }}',
    "batch fill": '{{ range(10) | batch(1000000000, "x") | list }}',
    "macro recursion": "{% macro m(n) %}{% if n > 0 %}{{ m(n-1) }}{{ m(n-1) }}{% endif %}{% endmacro %}{{ m(40) }}",
}


@pytest.mark.parametrize("name", DETOURS)
def test_detours_around_the_limits_are_refused_with_little_memory(name: str) -> None:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.thread_time()
    with pytest.raises(RenderError) as caught:
        Renderer().render(make_campaign(text="Hi\n" + DETOURS[name] + BYE, html=None), make_recipient(1))
    assert caught.value.reason.startswith("text template, line 2: "), caught.value.reason
    assert time.thread_time() - start < 1.5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 100_000  # KiB


def test_checked_filters_and_methods_keep_their_meaning() -> None:
    text = ('{{ range(3) | join(d="-") }} {{ range(3) | map("string") | join(",") }} {{ "abc" | join(".") }} '
            '{{ [{"a": 1}, {"a": 2}] | join("/", attribute="a") }} {{ "{}-{}".format(1, name) }} {{ name[1:3] }} '
            '{{ "%(a)s" | format(a=1) }} {{ name | center(9) }}|{{ "a b" | replace(" ", "_") }}' + BYE)
    letter = Renderer().render(make_campaign(text=text, html=None), make_recipient(1, fields={"name": "Annie"}))
    shown = email.message_from_bytes(letter.data, policy=email.policy.default).get_content()
    assert shown.splitlines()[0] == "0-1-2 0,1,2 a.b.c 1/2 1-Annie nn 1   Annie  |a_b", shown

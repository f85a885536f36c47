"""Templates that would exhaust whoever renders them, each with a word its refusal must name.

Used by the agent's render tests and the panel's save and preview tests (issue 12, point 2). Each
is one line; the tests put it on a line of its own and expect that line in the error.
"""

from __future__ import annotations

# name: (template line, a phrase the error names: the limit it hit)
BOMBS: dict[str, tuple[str, str]] = {
    "repeated string": ('{{ "x" * 10**10 }}', "characters"),
    "huge power": ("{{ 10**(10**10) }}", "bits"),  # (Jinja's ** is left-associative: 10**10**10 is 10^100)
    "chained powers": ("{{ (2**64)**64**64 }}", "bits"),
    "powers of powers": ("{{ ((((2**64)**64)**64)**64)**64 }}", "bits"),
    "nested loops": ("{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}", "100,000"),
    "range of range": ("{% for a in range(100000) %}{% for b in range(a) %}x{% endfor %}{% endfor %}", "100,000"),
    "output by loops": ("{% for a in range(100000) %}{{ 'y' * 1000 }}{% endfor %}", "1 MiB"),
    "output by repetition": ('{{ "x" * 1000000 }}{{ "x" * 1000000 }}', "1 MiB"),
    "replace amplifies": ('{{ ("x" * 1000000) | replace("x", "x" * 1000000) }}', "characters"),
    "captured block": ("{% set s %}{% for a in range(99999) %}{{ 'x' * 1000 }}{% endfor %}{% endset %}{{ s | length }}",
                       "MiB"),
    "list printed": ('{{ ["x" * 1000000] * 1000 }}', "characters"),
}

# Passes every check that does not know the recipient: the loops run as often as a field says.
DATA_LOOPS = "{% for a in range(n | int) %}{% for b in range(n | int) %}x{% endfor %}{% endfor %}"

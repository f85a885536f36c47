"""The fuzz run of the panel's JSON API and the agent API (issue 12 point 9): Hypothesis strategies
(strategies.py) and the apps they are sent to with their checks (targets.py), shared by
bench/fuzz.py (100,000 requests) and tests/security/test_fuzz.py (a few thousand in `make test`)."""

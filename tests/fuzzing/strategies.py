"""Hypothesis strategies for the fuzz run: requests to the panel's JSON API and to the agent API.

Each request starts from a valid one (a body the route takes, ids the user owns) and is then
bent: a field of the wrong type, size, encoding or nesting, a field left out or one too many, a
body that is no JSON or a JSON of the wrong shape, ids of nobody's or of another user's objects,
query strings and path keys of any text. For the agent, either the outer layer is broken (no
Fernet token, another key, stale or future timestamps, an envelope for another path or without a
nonce, no zlib, a replay, a body over the size limit, a small body that inflates to a large one),
or the message is sealed correctly and the JSON inside is bent as above.

Only the specs are drawn here; tests/fuzzing/targets.py turns them into bytes when sending them
(a sealed body needs the time and a fresh nonce of the moment it is sent).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import strategies as st

# -- JSON values of every type, size and nesting ----------------------------------------------------

SIZES = (0, 1, 2, 63, 64, 255, 256, 320, 1000, 4096, 65_536)
HUGE = "a" * (1 << 20)  # one string of 1 MB, made once
CHARS = ("a", "é", "😀", "\x00", " ", "\n", "<", "'", '"', "\\", "%", "@", "\ud800", "\u202e", "\ufeff", "{{", "}}")
INTS = (0, 1, -1, 2**31 - 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, -(10**30))

sized_text = st.builds(lambda ch, n: ch * n, st.sampled_from(CHARS), st.sampled_from(SIZES))
short_text = st.text(max_size=12)
latin1_text = st.text(alphabet=st.characters(max_codepoint=255, blacklist_categories=("Cs",)), max_size=40)

scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(INTS), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), short_text, sized_text,
    st.sampled_from(["", "1", "-1", "true", "null", "[]", "{}", "ann@example.org", "127.0.0.1", "*", "paused",
                     "{{ name }}", "{% for x in y %}", "<script>", "../../etc/passwd", "1e400", "0x10", HUGE]),
)

json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(short_text | st.sampled_from(["email", "id"]),
                                                                      children, max_size=4),
    max_leaves=12,
)

# Drawing a nested value costs Hypothesis ~5 ms, more than most requests: the run draws a pool of
# them once (build_value_pool) and each request then draws from the pool (its choice is still
# Hypothesis's, so a failing request shrinks and replays as usual).
_POOL: list[Any] = []


def build_value_pool(size: int = 1000, seed: int = 0) -> None:
    """Fill the pool of JSON values (call it before the run's @given, never inside one)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as with_seed

    if len(_POOL) >= size:
        return

    @with_seed(seed)
    @settings(max_examples=size, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(json_values)
    def collect(value: Any) -> None:
        _POOL.append(value)

    collect()


def _pool() -> st.SearchStrategy[Any]:
    if not _POOL:
        raise RuntimeError("call build_value_pool() before drawing requests")
    return st.sampled_from(_POOL)


pooled_values = st.deferred(_pool)


@dataclass(frozen=True)
class RawJson:
    """A body given as JSON text, not as a value: nesting deeper than any parser's recursion."""

    text: str


def _nested(opener: str, depth: int) -> RawJson:
    if opener == "[":
        return RawJson("[" * depth + "]" * depth)
    return RawJson('{"a":' * depth + "1" + "}" * depth)


deep_nesting = st.builds(_nested, st.sampled_from(["[", "{"]), st.sampled_from([100, 1000, 5000, 100_000]))


@st.composite
def bent(draw, value: Any, depth: int = 0) -> Any:
    """`value` (a valid body or a part of one) with one thing wrong, or, now and then, as it is."""
    roll = draw(st.integers(0, 19))
    if roll == 0:
        return value
    if roll == 1:
        return draw(pooled_values)
    if roll == 2 and depth == 0:
        return draw(deep_nesting)
    if isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        how = draw(st.sampled_from(["bend", "bend", "bend", "drop", "add", "type"]))
        changed = dict(value)
        if how == "drop":
            del changed[key]
        elif how == "add":
            changed[draw(short_text | st.sampled_from(["id", "user_id", "status", "__proto__"]))] = draw(pooled_values)
        elif how == "type":
            changed[key] = draw(scalars)
        else:
            changed[key] = draw(bent(value[key], depth + 1))
        return changed
    if isinstance(value, list) and value:
        how = draw(st.sampled_from(["bend", "bend", "append", "many", "empty"]))
        if how == "empty":
            return []
        if how == "many":
            return value * draw(st.sampled_from([2, 100, 5001]))
        if how == "append":
            return [*value, draw(pooled_values)]
        n = draw(st.integers(0, len(value) - 1))
        return [*value[:n], draw(bent(value[n], depth + 1)), *value[n + 1:]]
    return draw(scalars)


# -- the panel's JSON API ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PanelIds:
    """What the fuzzed user owns (and what someone else owns) in the seeded database."""

    lists: tuple[int, ...]
    campaigns: tuple[int, ...]
    servers: tuple[int, ...]
    domains: tuple[int, ...]
    recipients: tuple[str, ...]  # keys: an address or an id, as text
    suppressions: tuple[str, ...]
    others: tuple[int, ...]  # ids of another user's objects
    server_ips: tuple[str, ...] = ("192.0.2.10",)


@dataclass(frozen=True)
class PanelRequest:
    method: str
    path: str
    auth: str | None  # the Authorization header; None: none at all
    body: Any = None  # a JSON value, RawJson, bytes, or None (no body)
    encoding: str = "utf-8"
    content_type: str | None = "application/json"
    route: str = ""

    def body_bytes(self) -> bytes | None:
        return body_bytes(self.body, self.encoding)


def body_bytes(body: Any, encoding: str) -> bytes | None:
    if body is None or isinstance(body, bytes):
        return body
    text = body.text if isinstance(body, RawJson) else json.dumps(body, ensure_ascii=encoding == "ascii")
    errors = "surrogatepass" if "utf" in encoding else "replace"  # a lone surrogate goes as it is, or as "?"
    return text.encode("utf-8" if encoding == "ascii" else encoding, errors)


def panel_templates(ids: PanelIds) -> dict[tuple[str, str], Any]:
    """A body each route with one takes, by (method, URL rule)."""
    return {
        ("POST", "/api/v1/lists"): {"name": "Fuzzed list"},
        ("POST", "/api/v1/lists/<int:list_id>/recipients"): [
            {"email": "ann@example.org", "name": "Ann"}, {"email": "bob@example.net", "city": "Oslo"}],
        ("PATCH", "/api/v1/lists/<int:list_id>/recipients/<key>"): {"email": "ann2@example.org", "name": "Ann"},
        ("POST", "/api/v1/suppressions"): {"email": "gone@example.org", "reason": "manual"},
        ("POST", "/api/v1/campaigns"): {
            "name": "Fuzz", "subject": "Hi {{ name }}", "from_email": "news@example.com", "from_name": "News",
            "reply_to": None, "text": "Hello {{ name }}\n{{ unsubscribe_url }}\n", "html": None,
            "encoding": "quoted-printable", "lists": list(ids.lists[:1]), "exclude_lists": [],
            "servers": list(ids.servers[:1]), "domains": [], "tracking_domains": [], "track_clicks": True,
            "track_opens": False, "priority": 5},
        ("PATCH", "/api/v1/campaigns/<int:campaign_id>"): {"priority": 7},
        ("PUT", "/api/v1/servers/<int:server_id>/config"): {
            "helo": {ids.server_ips[0]: "mx1.example.net"},
            "rate_limits": [{"source_ip": "*", "domain": "gmail.com", "per_minute": 60}],
            "ips": {ids.server_ips[0]: {"weight": 3, "active": True}}},
        ("POST", "/api/v1/domains"): {
            "name": "fuzz.example", "kind": "sending", "zone": "", "dns_host": "127.0.0.1", "dns_port": 1,
            "tsig_key_name": "fuzz-key", "tsig_algorithm": "hmac-sha256", "tsig_secret": "c2VjcmV0c2VjcmV0c2VjcmV0",
            "dkim_selector": "mailfleet", "dmarc_policy": "none", "dmarc_rua": ""},
    }


QUERY_PARAMS = {
    "/api/v1/suppressions": ("limit", "q", "after"),
    "/api/v1/domains/<int:domain_id>": ("keep_records",),
}

CSV_BODIES = (b"email,name\nann@example.org,Ann\n", b"email\n" + b"x" * 70_000 + b"\n", b"\xff\xfe\x00bad",
              b"name\nno email column\n", b"email,email\na@example.org,b@example.org\n", b'email\n"unclosed\n',
              b"email," + b",".join(b"f%d" % i for i in range(300)) + b"\na@example.org\n", b"", b"\x00" * 100)


def _path_value(converter: str, name: str, ids: PanelIds) -> st.SearchStrategy[str]:
    if converter == "int":
        owned = {"list_id": ids.lists, "campaign_id": ids.campaigns, "server_id": ids.servers,
                 "domain_id": ids.domains}.get(name, ids.lists)
        return st.one_of(st.sampled_from(owned), st.sampled_from(owned), st.sampled_from(ids.others),
                         st.sampled_from(["0", "999999", "9223372036854775807", "9223372036854775808",
                                          "99999999999999999999999", "-1", "1.5", "0x1", "%20", "01"])).map(str)
    if converter.startswith("any"):
        return st.sampled_from(converter[converter.index("(") + 1:converter.index(")")].replace(" ", "").split(","))
    keys = ids.recipients if "recipients" in name or name == "key" else ids.suppressions
    # at most ~4 KB: gunicorn refuses a longer request line before the app sees it
    return st.one_of(st.sampled_from(keys + ids.suppressions), short_text, sized_text.map(lambda s: s[:1000]),
                     st.sampled_from(["0", "-1", "99999999999999999999", "%00", "..", "a@b", "@example.org"]))


def _auth(token: str, other_token: str) -> st.SearchStrategy[str | None]:
    good = f"Bearer {token}"
    return st.one_of(
        st.just(good), st.just(good), st.just(good), st.just(good), st.just(good), st.just(good),
        st.just(f"Bearer {other_token}"),
        st.sampled_from([None, "", "Bearer", "Bearer ", "bearer " + token, "Basic YTpi", token, f"Bearer {token}x",
                         f"Bearer {token[:-1]}", "Bearer " + "A" * 10_000, f"Bearer  {token} "]),
        latin1_text.map(lambda s: "Bearer " + s.replace("\r", " ").replace("\n", " ")),
    )


def panel_request(rules: list[tuple[str, str, tuple[tuple[str, str, str], ...]]], ids: PanelIds,
                  token: str, other_token: str) -> st.SearchStrategy[PanelRequest]:
    """Requests to the panel's API rules: (method, rule, ((converter, name, placeholder), …))."""
    templates = panel_templates(ids)

    @st.composite
    def draw_request(draw) -> PanelRequest:
        method, rule, params = draw(st.sampled_from(rules))
        if draw(st.integers(0, 29)) == 17:  # a method the route does not take
            method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]))
        path = rule
        for converter, name, placeholder in params:
            value = draw(_path_value(converter, name, ids))
            path = path.replace(placeholder, quote(value, safe="", errors="surrogatepass"))
        query = {name: draw(st.one_of(st.sampled_from(["1", "50", "1000", "1001", "0", "-1", "", "true", "@example.org",
                                                        "ann@example.org"]),
                                  short_text, sized_text.map(lambda s: s[:1000])))
                 for name in QUERY_PARAMS.get(rule, ()) if draw(st.booleans())}
        if draw(st.integers(0, 9)) == 0:
            query[draw(short_text)] = draw(short_text)
        if query:
            path += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='', errors='surrogatepass')}"
                                   for k, v in query.items())
        template = templates.get((method, rule))
        content_type = draw(st.sampled_from(["application/json"] * 8 + [
            "application/json; charset=utf-16", "text/plain", "application/x-www-form-urlencoded", None,
            "text/csv", "text/csv; charset=latin-1", "application/json; charset=bogus"]))
        encoding = draw(st.sampled_from(["utf-8"] * 6 + ["ascii", "utf-16", "utf-32", "latin-1", "utf-8-sig"]))
        if rule.endswith("/recipients") and draw(st.integers(0, 3)) == 0:
            body, content_type = draw(st.sampled_from(CSV_BODIES)), "text/csv"
        elif template is not None:
            body = draw(bent(template))
        elif method in ("POST", "PUT", "PATCH") or draw(st.integers(0, 9)) == 0:
            body = draw(st.one_of(st.none(), pooled_values, st.binary(max_size=64)))
        else:
            body = None
        return PanelRequest(method, path, draw(_auth(token, other_token)), body, encoding,
                            content_type if body is not None else draw(st.sampled_from([None, "application/json"])),
                            route=f"{method} {rule}")

    return draw_request()


# -- the agent API ---------------------------------------------------------------------------------------

OUTER_KINDS = ("sealed",) * 12 + ("garbage", "wrong_key", "stale", "future", "wrong_path", "bad_envelope",
                                  "not_zlib", "zlib_not_json", "replay", "truncated", "empty")
RARE_KINDS = ("huge", "inflating")  # each costs tens of MB to make: about one request in 200


@dataclass(frozen=True)
class AgentRequest:
    """What to send: `kind` says how the body is made (targets.AgentTarget.body_of makes it)."""

    path: str
    kind: str
    data: Any = None  # the JSON inside a sealed message
    method: str = "POST"
    envelope: Any = None  # bad_envelope: the envelope itself
    raw: bytes = b""  # garbage, or what zlib_not_json compresses
    offset: int = 0  # stale/future: seconds from now
    size: int = 0  # huge / inflating: bytes
    route: str = field(default="")


def agent_templates(source_ip: str) -> dict[str, Any]:
    from tests.agent.conftest import make_campaign, make_recipient

    return {
        "/v1/ping": {},
        "/v1/batches": {"batch_id": "c12-s3-000001", "campaign": make_campaign(),
                        "recipients": [make_recipient(n, source_ip=source_ip) for n in (9001, 9002)]},
        "/v1/outcomes": {"ack": 0},
        "/v1/campaigns/state": {"campaign_id": 12, "state": "paused"},
        "/v1/recall": {"ids": [9001, 9002], "after": 0, "emails": ["user9001@example.org"], "campaign_ids": [12]},
        "/v1/config": {"version": 1, "rate_limits": [{"source_ip": source_ip, "domain": "gmail.com", "per_minute": 60}],
                       "helo": {source_ip: "mx.example.net"},
                       "helo_by_domain": {source_ip: {"example.com": "mx.example.com"}},
                       "dkim": {}, "bounce_domains": ["bounces.example.com"],
                       "providers": {"google": ["google.com", "googlemail.com"], "acme": ["mx.acme.net"]},
                       "provider_limits": [{"source_ip": source_ip, "provider": "google", "per_minute": 60,
                                            "per_hour": 600, "connections": 2, "per_connection": 20},
                                           {"source_ip": "*", "provider": "small.example", "per_hour": 100}]},
    }


def agent_request(paths: list[str], source_ip: str) -> st.SearchStrategy[AgentRequest]:
    templates = agent_templates(source_ip)

    @st.composite
    def draw_request(draw) -> AgentRequest:
        path = draw(st.sampled_from(paths))
        method = "POST" if draw(st.integers(0, 29)) != 17 else draw(st.sampled_from(["GET", "PUT", "DELETE"]))
        if draw(st.integers(0, 49)) == 0:
            path = draw(st.sampled_from(["/v1/", "/v1/batch", "/", "/v1/ping/"]))
        kind = draw(st.sampled_from(RARE_KINDS if draw(st.integers(0, 199)) == 137 else OUTER_KINDS))
        route = f"{method} {path}"
        data = draw(bent(templates.get(path, {}))) if kind in ("sealed", "stale", "future", "wrong_path") else None
        if kind == "garbage":
            return AgentRequest(path, kind, method=method, raw=draw(st.binary(max_size=200) | sized_text.map(
                lambda s: s.encode("utf-8", "surrogatepass"))), route=route)
        if kind == "bad_envelope":
            envelope = draw(st.one_of(pooled_values, st.builds(
                dict, path=st.just(path) | pooled_values, nonce=pooled_values, data=pooled_values)))
            return AgentRequest(path, kind, method=method, envelope=envelope, route=route)
        if kind == "zlib_not_json":
            return AgentRequest(path, kind, method=method, raw=draw(st.binary(max_size=100)), route=route)
        if kind == "stale":
            return AgentRequest(path, kind, data, method, offset=-draw(st.sampled_from([121, 200, 86_400, 10**9])),
                                route=route)
        if kind == "future":
            return AgentRequest(path, kind, data, method, offset=draw(st.sampled_from([61, 3600, 10**9])), route=route)
        if kind == "huge":
            return AgentRequest(path, kind, method=method, size=32 * 1024 * 1024 + 1, route=route)
        if kind == "inflating":
            return AgentRequest(path, kind, method=method, size=draw(st.sampled_from([1 << 20, 64 << 20])), route=route)
        return AgentRequest(path, kind, data, method, route=route)

    return draw_request()


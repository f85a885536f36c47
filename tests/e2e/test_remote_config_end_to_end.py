"""Remote configuration through the real system: a HELO name and a rate limit changed on the panel's
server page reach the running agent through the daemon, and the next letters show it at the
recipients' server (the capture). No Ansible, no restart of anything."""

from __future__ import annotations

import re
from typing import Callable

import pytest
import requests

from devserver.mail_capture import Captured
from tests.helpers import wait_for

from .conftest import Api

CSRF_RE = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')


def arrived_at(message: Captured) -> float:
    """When the capture stored it: Maildir names start with <seconds>.M<microseconds>."""
    seconds, _, rest = message.path.name.partition(".M")
    return int(seconds) + int(rest[:6]) / 1e6


@pytest.fixture(scope="module")
def web(stack) -> requests.Session:
    """A browser-like session logged in as the stack's admin."""
    session = requests.Session()
    page = session.get(stack.panel_url + "/login", timeout=30).text
    answer = session.post(stack.panel_url + "/login", timeout=30, allow_redirects=False, data={
        "csrf_token": CSRF_RE.search(page).group(1), "email": stack.settings.admin_email,
        "password": stack.admin_password})
    assert answer.status_code == 302, answer.text
    return session


def post_form(stack, web: requests.Session, path: str, data: dict) -> requests.Response:
    page = web.get(f"{stack.panel_url}/servers/{stack.server_id}", timeout=30).text
    answer = web.post(stack.panel_url + path, data={"csrf_token": CSRF_RE.search(page).group(1), **data},
                      timeout=30, allow_redirects=False)
    assert answer.status_code == 302, answer.text
    return answer


def server_row(stack, panel_rows: Callable[[str, tuple], list[tuple]]) -> tuple[int, int]:
    (row,) = panel_rows("SELECT config_version, config_applied FROM servers WHERE id = ?", (stack.server_id,))
    return row


def send(api: Api, name: str, emails: list[str]) -> int:
    list_id = api.post("/lists", {"name": name})["id"]
    assert api.post(f"/lists/{list_id}/recipients", [{"email": e} for e in emails])["added"] == len(emails)
    campaign = api.post("/campaigns", {"name": name, "subject": "Hello", "from_email": "news@sender.example",
                                       "text": "Hi\n{{ unsubscribe_url }}\n", "lists": [list_id]})
    api.post(f"/campaigns/{campaign['id']}/start", {})
    return campaign["id"]


def test_helo_and_rate_limit_changed_on_the_page_reach_the_next_letters(stack, api: Api, web: requests.Session,
                                                                       panel_rows):
    page = web.get(f"{stack.panel_url}/servers/{stack.server_id}", timeout=30).text
    ip_ids = dict((ip, int(i)) for i, ip in re.findall(
        r'/ips/(\d+)/helo"[^>]*>\s*<input[^>]*>\s*<input[^>]*aria-label="HELO name of ([0-9.]+)"', page))
    assert set(ip_ids) == {"127.0.0.2", "127.0.0.3"}, page

    # before: the names Exim was configured with
    send(api, "before", ["one@before.example", "two@before.example"])
    wait_for(lambda: stack.capture.count() == 2, "the first two letters", timeout=60)
    assert {(m.peer_ip, m.helo) for m in stack.capture.messages()} == {
        ("127.0.0.2", "ip2.worker.test"), ("127.0.0.3", "ip3.worker.test")}

    post_form(stack, web, f"/servers/{stack.server_id}/ips/{ip_ids['127.0.0.2']}/helo", {"helo": "changed.worker.test"})
    post_form(stack, web, f"/servers/{stack.server_id}/rate-limits",
              {"source_ip": "*", "domain": "paced.example", "per_minute": "60"})  # one a second per source IP
    assert server_row(stack, panel_rows)[0] == 2
    wait_for(lambda: server_row(stack, panel_rows) == (2, 2), "the daemon to apply version 2 on the agent", timeout=30)
    page = web.get(f"{stack.panel_url}/servers/{stack.server_id}", timeout=30).text
    assert "configuration version 2 applied: 1 rate limits, 2 HELO names" in page
    assert "applied on the agent" in page

    paced = [f"r{i}@paced.example" for i in range(10)]
    send(api, "after", paced + [f"r{i}@quick.example" for i in range(10)])
    wait_for(lambda: stack.capture.count() == 22, "the twenty letters after the change", timeout=90)
    after = [m for m in stack.capture.messages() if not m.rcpt_to.endswith("@before.example")]
    helos = {(m.peer_ip, m.helo) for m in after}
    assert helos == {("127.0.0.2", "changed.worker.test"), ("127.0.0.3", "ip3.worker.test")}, helos
    # ten letters over two IPs at one a second each: at least four seconds from first to last
    times = sorted(arrived_at(m) for m in after if m.rcpt_to in paced)
    assert times[-1] - times[0] > 3.5, times
    quick = sorted(arrived_at(m) for m in after if m.rcpt_to.endswith("@quick.example"))
    assert quick[-1] - quick[0] < times[-1] - times[0], (quick, times)

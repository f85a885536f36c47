"""An agent key replaced in the middle of a campaign (`flask servers rotate-key`) on the real
system: every letter arrives once, the server never goes offline, the agent holds the new key."""

from __future__ import annotations

from devserver.mail_capture import read_maildir
from tests.helpers import wait_for

from .conftest import Api

N = 2000


def test_agent_key_replaced_mid_campaign_loses_no_letter(stack, api: Api, panel_rows) -> None:
    key_file = stack.agent_config_path.parent / "agent.key"
    old_key = key_file.read_bytes().split()[0]
    list_id = api.post("/lists", {"name": "rotation"})["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": f"k{i}@rotation.example"} for i in range(N)])
    campaign = api.post("/campaigns", {"name": "rotation", "subject": "s", "from_email": "n@sender.example",
                                       "text": "hi {{ email }}\n{{ unsubscribe_url }}", "lists": [list_id]})
    api.post(f"/campaigns/{campaign['id']}/start", {})
    wait_for(lambda: api.get(f"/campaigns/{campaign['id']}/stats")["sent"] > 0 or None, timeout=60, what="sending")
    assert "next round" in stack.flask("servers", "rotate-key", str(stack.server_id))
    wait_for(lambda: key_file.read_bytes().split()[0] != old_key or None, timeout=30,
             what="the agent holding the new key")
    wait_for(lambda: api.get(f"/campaigns/{campaign['id']}/stats")["delivered"] == N or None,
             timeout=180, what=f"all {N} delivered")
    got = [m.rcpt_to for m in read_maildir(stack.maildir) if m.rcpt_to.endswith("@rotation.example")]
    assert len(got) == N and len(set(got)) == N
    events = [kind for kind, in panel_rows("SELECT kind FROM server_events WHERE server_id = ? ORDER BY id",
                                           (stack.server_id,))]
    after = events[events.index("key"):]
    assert "offline" not in after and "error" not in after, events
    assert [s["status"] for s in api.get("/servers") if s["id"] == stack.server_id] == ["online"]

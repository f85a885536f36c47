"""The letter as a mail reader sees it: parsed back with Python's email package."""

from __future__ import annotations

import email
import email.policy
import socket
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.utils import parsedate_to_datetime

import pytest

from worker_agent import render
from worker_agent.render import CampaignError, Renderer, RenderError

from .conftest import make_campaign, make_recipient


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects, message.defects
    for part in message.walk():
        assert not part.defects, part.defects
    return message


def lines_of(data: bytes) -> list[bytes]:
    assert data.endswith(b"\r\n")
    return data[:-2].split(b"\r\n")


def rfc2047_phrase(data: bytes, header: str) -> str:
    """The display name of an address header, decoded strictly by RFC 2047 (as mail clients do)."""
    head = data.split(b"\r\n\r\n")[0].decode("ascii").replace("\r\n ", " ")
    value = next(line for line in head.split("\r\n") if line.startswith(header + ": "))[len(header) + 2:]
    phrase = value.rpartition(" <")[0]
    return str(make_header(decode_header(phrase)))


def unix(text: str) -> str:
    return text.replace("\r\n", "\n")


@pytest.fixture(autouse=True)
def no_fqdn_lookups(monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a letter must never ask DNS who we are (socket.getfqdn can hang for seconds)."""
    def refuse(*_: object) -> str:
        raise AssertionError("socket.getfqdn called while rendering")
    monkeypatch.setattr(socket, "getfqdn", refuse)


@pytest.mark.parametrize("encoding", ["7bit", "quoted-printable", "base64"])
@pytest.mark.parametrize("parts", ["plain", "html", "both"])
def test_each_encoding_and_shape_round_trips(encoding: str, parts: str) -> None:
    text = "Hello {{ name }},\n\nA line with trailing space \nand = signs == and tabs\there.\n" + "long " * 60 + "\n"
    html = "<p>Hello {{ name }}</p>\n<p>" + "wide " * 80 + "</p>\n"
    campaign = make_campaign(encoding=encoding, text=text if parts != "html" else None,
                             html=html if parts != "plain" else None)
    letter = Renderer().render(campaign, make_recipient(7, fields={"name": "Bo"}))
    assert all(len(line) <= 998 for line in lines_of(letter.data))
    assert b"\n" not in letter.data.replace(b"\r\n", b"")  # no bare LF
    assert b"\r" not in letter.data.replace(b"\r\n", b"")  # no bare CR
    message = parse(letter.data)
    expected_text = text.replace("{{ name }}", "Bo")
    expected_html = html.replace("{{ name }}", "Bo")
    if parts == "html":  # an HTML-only campaign gets a plain alternative made from its HTML
        expected_text = "Hello Bo\n\n" + ("wide " * 80).strip() + "\n"
    if parts != "plain":
        assert message.get_content_type() == "multipart/alternative"
        plain, rich = message.get_payload()
        assert [plain.get_content_type(), rich.get_content_type()] == ["text/plain", "text/html"]
    else:
        plain = rich = message
        assert message.get_content_type() == "text/plain"
    assert plain["Content-Transfer-Encoding"] == encoding
    assert plain.get_content_charset() == "utf-8"
    assert unix(plain.get_content()) == expected_text
    if parts != "plain":
        assert rich["Content-Transfer-Encoding"] == encoding
        assert unix(rich.get_content()) == expected_html
    if encoding != "7bit":
        assert all(len(line) <= 76 for line in lines_of(letter.data) if not line.startswith((b"Content-", b"List-")))


def test_headers_of_a_letter() -> None:
    letter = Renderer().render(make_campaign(reply_to="help@example.com"), make_recipient(9001))
    message = parse(letter.data)
    assert message["From"].addresses[0].display_name == "Example News"
    assert message["From"].addresses[0].addr_spec == "news@example.com"
    assert message["To"].addresses[0].addr_spec == "user9001@example.org"
    assert message["To"].addresses[0].display_name == "Ann 9001"
    assert message["Reply-To"].addresses[0].addr_spec == "help@example.com"
    assert message["Subject"] == "News for Ann 9001"
    assert message["MIME-Version"] == "1.0"
    assert parsedate_to_datetime(message["Date"]).utcoffset() is not None
    assert message["Message-ID"].startswith("<") and message["Message-ID"].endswith("@example.com>")
    assert message["X-Mailfleet-Source-IP"] == "127.0.0.2"
    assert message["X-Mailfleet-Campaign"] == "12"
    assert message["List-Id"] == "<c12.example.com>"
    assert "Return-Path" not in message  # it is the envelope sender, returned beside the bytes
    assert letter.envelope_from == "bounce+9001-3f2a9c1b7e@bounces.example.com"
    assert letter.recipient == "user9001@example.org"


def test_list_unsubscribe_carries_the_token_twice() -> None:
    message = parse(Renderer().render(make_campaign(), make_recipient(9001)).data)
    assert str(message["List-Unsubscribe"]) == (
        "<http://127.0.0.1:5000/u/9001-3f2a9c1b7e>, <mailto:unsubscribe+9001-3f2a9c1b7e@bounces.example.com>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "http://127.0.0.1:5000/u/9001-3f2a9c1b7e" in message.get_body(("plain",)).get_content()


def test_message_ids_differ_between_letters() -> None:
    renderer = Renderer()
    ids = {parse(renderer.render(make_campaign(), make_recipient(i)).data)["Message-ID"] for i in range(50)}
    assert len(ids) == 50


@pytest.mark.parametrize("encoding", ["7bit", "quoted-printable", "base64"])
def test_non_ascii_names_subject_and_body(encoding: str) -> None:
    campaign = make_campaign(from_name="Ålesund Nyheter — «ежедневно»", subject="Привет, {{ name }}! 🎉 " * 3,
                             encoding=encoding)
    recipient = make_recipient(5, fields={"name": "Zoë Ñúñez 山田", "city": "Tromsø"})
    letter = Renderer().render(campaign, recipient)
    letter.data.decode("ascii")  # RFC 2047 / transfer encodings: nothing 8-bit on the wire
    assert all(len(line) <= 78 for line in lines_of(letter.data.split(b"\r\n\r\n")[0] + b"\r\n"))
    message = parse(letter.data)
    assert rfc2047_phrase(letter.data, "From") == "Ålesund Nyheter — «ежедневно»"
    assert rfc2047_phrase(letter.data, "To") == "Zoë Ñúñez 山田"
    # Python's structured-header parser keeps folding space between encoded words (RFC 2047 drops it)
    assert " ".join(message["From"].addresses[0].display_name.split()) == "Ålesund Nyheter — «ежедневно»"
    assert message["To"].addresses[0].display_name == "Zoë Ñúñez 山田"
    assert message["Subject"] == ("Привет, Zoë Ñúñez 山田! 🎉 " * 3).strip()
    assert "Tromsø" in message.get_body(("plain",)).get_content()
    assert "Tromsø" in message.get_body(("html",)).get_content()
    # 7bit cannot carry "ø": that part goes quoted-printable rather than break
    expected = "quoted-printable" if encoding == "7bit" else encoding
    assert message.get_body(("plain",))["Content-Transfer-Encoding"] == expected


@pytest.mark.parametrize("name", ['Smith, John', 'A "quoted" name', "back\\slash", "=?utf-8?b?Zm9v?="])
def test_ascii_display_names_that_need_quoting(name: str) -> None:
    message = parse(Renderer().render(make_campaign(from_name=name), make_recipient(1, fields={"name": name})).data)
    assert message["From"].addresses[0].display_name == name
    assert message["To"].addresses[0].display_name == name
    assert message["To"].addresses[0].addr_spec == "user1@example.org"


def test_a_long_ascii_subject_is_folded_and_read_back_whole() -> None:
    subject = " ".join(f"word{i}" for i in range(200))
    letter = Renderer().render(make_campaign(subject=subject), make_recipient())
    assert all(len(line) <= 78 for line in lines_of(letter.data.split(b"\r\n\r\n")[0] + b"\r\n"))
    assert parse(letter.data)["Subject"] == subject


def test_fields_cannot_inject_headers() -> None:
    evil = "Ann\r\nBcc: victim@example.net\nX-Evil: 1"
    campaign = make_campaign(subject="Hi {{ name }}")
    message = parse(Renderer().render(campaign, make_recipient(1, fields={"name": evil})).data)
    assert "Bcc" not in message and "X-Evil" not in message
    assert message["Subject"] == "Hi Ann Bcc: victim@example.net X-Evil: 1"


def test_html_escapes_fields_and_text_does_not() -> None:
    recipient = make_recipient(1, fields={"name": "<script>alert(1)</script> & Co", "city": "x"})
    message = parse(Renderer().render(make_campaign(), recipient).data)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in message.get_body(("html",)).get_content()
    assert "<script>alert(1)</script> & Co" in message.get_body(("plain",)).get_content()
    assert message["Subject"] == "News for <script>alert(1)</script> & Co"


def test_template_variables_are_fields_email_and_unsubscribe_url() -> None:
    campaign = make_campaign(text="{{ email }}|{{ unsubscribe_url }}|{{ plan }}|{{ missing }}|", html=None)
    recipient = make_recipient(3, fields={"plan": "Gold", "email": "spoofed@x", "unsubscribe_url": "x"})
    body = parse(Renderer().render(campaign, recipient).data).get_content()
    assert body == "user3@example.org|http://127.0.0.1:5000/u/3-3f2a9c1b7e|Gold||\r\n"


def test_a_template_error_fails_only_that_letter() -> None:
    renderer = Renderer()
    campaign = make_campaign(text="{{ 100 // count }} items\n", html=None)
    with pytest.raises(RenderError) as failed:
        renderer.render(campaign, make_recipient(1, fields={"count": 0}))
    assert "ZeroDivisionError" in failed.value.reason
    ok = parse(renderer.render(campaign, make_recipient(2, fields={"count": 4})).data)
    assert ok.get_content() == "25 items\r\n"


@pytest.mark.parametrize("payload", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ joiner.__init__.__globals__ }}",
    "{{ lipsum.__globals__['os'].popen('id').read() }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ self.__init__.__globals__ }}",
    "{{ range.__self__ }}",
    "{{ request }}{{ config }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
    "{{ 'a'.format.__globals__ }}",
    "{{ '{0.__class__.__mro__}'.format('') }}",
    "{{ email.__class__.__base__.__subclasses__() }}",
    "{{ 'x' * 100000000 }}",
    "{{ 9 ** 9 ** 9 }}",
])
def test_sandbox_escapes_render_nothing_dangerous(payload: str) -> None:
    campaign = make_campaign(subject="s", text="before " + payload + " after\n", html=None)
    try:
        letter = Renderer().render(campaign, make_recipient(1))
    except RenderError as exc:
        assert "template" in exc.reason
        return
    body = parse(letter.data).get_content()
    for leak in ("class", "mro", "subclasses", "globals", "module", "uid=", "builtins", "function", "object at"):
        assert leak not in body
    assert len(letter.data) < 10_000


def test_a_syntax_error_is_the_campaigns_fault() -> None:
    with pytest.raises(CampaignError, match="text template, line 1"):
        Renderer().render(make_campaign(text="{% if %}"), make_recipient())


@pytest.mark.parametrize("change, message", [
    ({"encoding": "8bit"}, "encoding"),
    ({"text": None, "html": None}, "text or html"),
    ({"from_email": "not an address"}, "from_email"),
    ({"bounce_domain": "bad domain"}, "bounce_domain"),
    ({"unsubscribe_url": "http://x/ y"}, "unsubscribe_url"),
    ({"subject": None}, "subject is missing"),
])
def test_campaign_problems_are_named(change: dict, message: str) -> None:
    with pytest.raises(CampaignError, match=message):
        Renderer().render(make_campaign(**change), make_recipient())


@pytest.mark.parametrize("email_address", ["no-at-sign", "a b@example.org", "x@exa mple.org", "ünï@example.org",
                                           "x@example.org\r\nBcc: y@example.org"])
def test_a_bad_recipient_address_fails_that_letter(email_address: str) -> None:
    with pytest.raises(RenderError, match="address"):
        Renderer().render(make_campaign(), make_recipient(1, email=email_address))


def test_templates_are_compiled_once_per_campaign(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = []
    original = render._TEXT_ENV.from_string

    def counting(source: str, *args: object, **kwargs: object) -> object:
        compiled.append(source)
        return original(source, *args, **kwargs)

    monkeypatch.setattr(render._TEXT_ENV, "from_string", counting)
    renderer = Renderer()
    campaign = make_campaign()
    for i in range(20):
        renderer.render(dict(campaign), make_recipient(i))  # an equal campaign object (as from JSON) hits the cache
    assert len(compiled) == 2  # subject and text
    renderer.render(make_campaign(subject="Changed {{ name }}"), make_recipient(1))
    assert len(compiled) == 4  # a changed campaign is compiled again


def test_seven_bit_multipart_boundary_never_appears_in_a_body() -> None:
    renderer = Renderer()
    for i in range(20):
        letter = renderer.render(make_campaign(encoding="7bit"), make_recipient(i))
        message = parse(letter.data)
        boundary = message.get_boundary()
        assert boundary and letter.data.count(f"--{boundary}".encode()) == 3


def test_example_pair_renders() -> None:
    pair = render.example_pair()
    message = parse(Renderer().render(pair["campaign"], pair["recipient"]).data)
    assert message["Subject"] == "News for Ann"


def test_a_long_non_ascii_name_splits_between_words() -> None:
    name = "Редакция ежедневных новостей города Санкт-Петербург и области"
    letter = Renderer().render(make_campaign(from_name=name), make_recipient(1, fields={"name": name}))
    assert all(len(line) <= 78 for line in lines_of(letter.data.split(b"\r\n\r\n")[0] + b"\r\n"))
    assert rfc2047_phrase(letter.data, "From") == name
    assert rfc2047_phrase(letter.data, "To") == name
    assert " ".join(parse(letter.data)["From"].addresses[0].display_name.split()) == name

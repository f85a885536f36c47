"""mime.text_from_html: the text/plain alternative of a letter written only in HTML."""

from __future__ import annotations

import pytest

from worker_agent.mime import text_from_html


@pytest.mark.parametrize("html,text", [
    ("<p>Hello,</p><p>news &amp; more</p>", "Hello,\n\nnews & more\n"),
    ("<html><head><title>T</title><style>p { color: red }</style></head><body><h1>Big</h1>"
     "<script>alert(1)</script><div>Body</div></body></html>", "Big\n\nBody\n"),
    ('<p>Read <a href="https://example.com/a">the story</a>.</p>', "Read the story (https://example.com/a).\n"),
    ('<a href="https://example.com/">https://example.com/</a>', "https://example.com/\n"),  # no URL twice
    ('<a href="#top">Top</a>', "Top\n"),
    ("<ul><li>one</li><li>two</li></ul>", "- one\n- two\n"),
    ("line<br>next<br/>last", "line\nnext\nlast\n"),
    ("<p>  lots   of\n\n  space  </p>", "lots of space\n"),
    ('<img src="x.png" alt="Logo"><p>x</p><hr><p>y</p>', "Logo\n\nx\n\n----\n\ny\n"),
    ("<p>unclosed <b>tags <i>here", "unclosed tags here\n"),
    ("<style>only style</style>", ""),
])
def test_text_from_html(html, text):
    assert text_from_html(html) == text


def test_template_tags_survive_so_a_template_can_be_converted_once():
    source = '<p>Hi {{ name }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    assert text_from_html(source) == "Hi {{ name }}\n\nUnsubscribe ({{ unsubscribe_url }})\n"

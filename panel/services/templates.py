"""Checking a campaign's subject, text and HTML templates before they are saved.

The letters are rendered on the workers in a Jinja2 sandbox with the recipient's fields,
`email` and `unsubscribe_url` as variables. Here each part is parsed in the same kind of
sandbox; a syntax error, an unknown tag, an unknown variable or a reach for private
attributes (`''.__class__`) is refused with the part and the line it is on, so a campaign
never fails letter by letter on the workers. Every body must show the unsubscribe link
(`{{ unsubscribe_url }}`): a body without it is refused saying what to add.

Nothing is evaluated here (no constant folding: `{{ "x" * 10**10 }}` costs nothing to check).
Then each part is rendered once with empty fields in a separate, limited process
(worker_agent/jail.py): a template that goes past a render limit even so (too many loop turns,
too long a text, too big a number: worker_agent/template_limits.py) would fail every letter and
is refused naming the limit and the line.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Iterable

from jinja2 import TemplateSyntaxError, nodes

from worker_agent import jail
from worker_agent.template_limits import LimitedSandbox

BUILTIN_VARIABLES = ("email", "unsubscribe_url")
PARTS = ("subject", "text", "html")

_env = LimitedSandbox()  # parses, and finds the variables read without folding any constant

# The letter a new campaign's form starts from (panel/letters/): a newsletter as HTML and the same
# words as plain text, each with the unsubscribe link, using only the built-in variables so it
# fits any list. tests/deliverability/ sends it through the real system to SpamAssassin.
STARTER_DIR = Path(__file__).resolve().parent.parent / "letters"
STARTER_SUBJECT = "Our news this month"


@dataclass(frozen=True)
class StarterLetter:
    subject: str
    text: str
    html: str


@cache
def starter_letter() -> StarterLetter:
    return StarterLetter(
        subject=STARTER_SUBJECT,
        text=(STARTER_DIR / "newsletter.txt").read_text(encoding="utf-8"),
        html=(STARTER_DIR / "newsletter.html").read_text(encoding="utf-8"),
    )


# What to add to a body that lacks the unsubscribe link.
UNSUBSCRIBE_HINTS = {
    "text": "add a line such as: Unsubscribe: {{ unsubscribe_url }}",
    "html": 'add a link such as <a href="{{ unsubscribe_url }}">Unsubscribe</a>',
}


@dataclass(frozen=True)
class TemplateProblem:
    part: str  # subject | text | html
    line: int  # 0: the part as a whole
    message: str

    def __str__(self) -> str:
        return f"{self.part}, line {self.line}: {self.message}" if self.line else f"{self.part}: {self.message}"


def allowed_variables(list_fields: Iterable[Iterable[str]]) -> set[str]:
    """The variables a template may use: the chosen lists' fields plus the built-in ones."""
    names = set(BUILTIN_VARIABLES)
    for fields in list_fields:
        names.update(fields)
    return names


def _loaded_at(tree: nodes.Template, name: str) -> int | None:
    """The first line that reads the variable `name`, None if none does."""
    for node in tree.find_all(nodes.Name):
        if node.name == name and node.ctx == "load":
            return node.lineno
    return None


TOO_DEEP = "the template nests expressions too deeply to be read: simplify it"


def _checked(part: str, source: str, variables: set[str]) -> tuple[nodes.Template | None, list[TemplateProblem]]:
    """The parsed part (None if it does not parse) and its problems, in line order."""
    try:
        return _analysed(part, source, variables)
    except RecursionError:  # Jinja's parser and tree walks recurse per nested expression ("{{{{{{…")
        return None, [TemplateProblem(part, 1, TOO_DEEP)]


def _analysed(part: str, source: str, variables: set[str]) -> tuple[nodes.Template | None, list[TemplateProblem]]:
    try:
        tree = _env.parse(source)
    except TemplateSyntaxError as exc:
        message = exc.message or "syntax error"
        return None, [TemplateProblem(part, exc.lineno or 1, message.rstrip("."))]
    problems: list[TemplateProblem] = []
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        attr = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(attr, str) and attr.startswith("_"):
            problems.append(TemplateProblem(part, node.lineno, f"{attr!r} is not allowed: private attributes are off limits"))
    for name in _env.undeclared_variables(tree):
        if name not in variables:
            known = ", ".join(sorted(variables))
            problems.append(
                TemplateProblem(part, _loaded_at(tree, name) or 1, f"unknown variable {name!r} (you can use: {known})")
            )
    return tree, sorted(problems, key=lambda problem: (problem.line, problem.message))


def check_template(part: str, source: str, variables: set[str]) -> list[TemplateProblem]:
    """Every problem of one part, in line order; empty when it may be saved."""
    problems = _checked(part, source, variables)[1]
    return problems or _past_limits({part: source}, variables)


# A part built only of these prints its text and the fields as they are: it cannot go past a limit,
# so it needs no trial render (most letters; a render process costs a fork, ~10 ms on a busy host).
_PLAIN_NODES = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Const, nodes.Getattr,
                nodes.If, nodes.Compare, nodes.Operand, nodes.Not, nodes.And, nodes.Or, nodes.CondExpr)
_PLAIN_FILTERS = {"e", "escape", "upper", "lower", "title", "capitalize", "trim", "default", "d", "striptags"}


def _plain(source: str) -> bool:
    try:
        return all(isinstance(node, _PLAIN_NODES) or (isinstance(node, nodes.Filter) and node.name in _PLAIN_FILTERS
                                                      and not node.args and not node.kwargs)
                   for node in _env.parse(source).find_all(nodes.Node))
    except (TemplateSyntaxError, RecursionError):
        return False


def _past_limits(parts: dict[str, str], variables: set[str]) -> list[TemplateProblem]:
    """The parts that go past a render limit with empty fields, rendered in the limited process."""
    parts = {part: source for part, source in parts.items() if not _plain(source)}
    if not parts:
        return []
    try:
        answer = jail.run("limits", {"parts": parts, "variables": sorted(variables)})
    except jail.JailError as exc:
        first = next(iter(parts))
        return [TemplateProblem(first, 0, f"the template could not be checked, the renderer stopped: {exc}; "
                                          "make its loops and texts smaller")]
    return [TemplateProblem(part, line, message) for part, line, message in answer["problems"]]


def _unsubscribe_link_missing(part: str) -> TemplateProblem:
    what = "text" if part == "text" else "HTML"
    return TemplateProblem(part, 0, f"the {what} body has no unsubscribe link, which every letter must show: "
                                    f"{UNSUBSCRIBE_HINTS[part]}")


def check_templates(parts: dict[str, str | None], variables: set[str]) -> list[TemplateProblem]:
    """Check subject / text / html (those given) against the allowed variables, and that each
    body shows the unsubscribe link."""
    problems: list[TemplateProblem] = []
    for part in PARTS:
        source = parts.get(part)
        if source:
            tree, found = _checked(part, source, variables)
            problems.extend(found)
            # Every letter must carry a visible way out. (A body that does not parse is reported above.)
            if part in UNSUBSCRIBE_HINTS and tree is not None and _loaded_at(tree, "unsubscribe_url") is None:
                problems.append(_unsubscribe_link_missing(part))
    if not problems:
        problems = _past_limits({part: parts[part] for part in PARTS if parts.get(part)}, variables)
    return problems

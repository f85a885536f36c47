"""Limits on what one render of a user's template may cost: the sandbox every letter, preview and
save-time check renders in (the panel imports it from here; this package never imports the panel).

Jinja's sandbox stops reaching for private attributes but not a template that asks for 10 GB
(``{{ "x" * 10**10 }}``), a huge number, 10^10 loop turns or a 1 GB string out of small pieces. So:

- nothing is evaluated at compile time (no optimizer, no constant folding of output), so compiling
  or analysing any template is fast and bounded;
- every operator, call, filter and slice checks its result *before* building it where the size can
  be foreseen (``*``, ``**``, ``%``, ``replace``, ``center``, ``join``…) and after otherwise: a text or
  list past MAX_TEXT, a number past MAX_INT_BITS is refused;
- per render (one ``Budget``): loop turns (all ``for`` loops together), text built in all, CPU time
  of the rendering thread, and each part's output, streamed and stopped as soon as it is too long.

Each limit exceeded raises ``LimitExceeded`` naming the limit and the template line.
"""

from __future__ import annotations

import operator
import re
import time
from contextvars import ContextVar
from functools import wraps
from types import TracebackType
from typing import Any, Callable, Iterable, Iterator, Mapping

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.meta import TrackingCodeGenerator
from jinja2.runtime import LoopContext, markup_join, str_join
from jinja2.visitor import NodeTransformer
from jinja2.sandbox import SandboxedEnvironment

MAX_OUTPUT = 1 << 20  # characters one part (subject, text, HTML) may have
MAX_TEXT = MAX_OUTPUT  # characters (or items) any one value a template builds may have
MAX_BUILT = 16 * MAX_OUTPUT  # characters (and items) a render may build in all
MAX_LOOPS = 100_000  # for-loop turns per render, all loops together
MAX_INT_BITS = 4096  # about 1,233 decimal digits
MAX_CPU_SECONDS = 1.0  # CPU time of the rendering thread per render
_CHECK_TIME_EVERY = 16  # ticks (calls, operators, loop turns) between two looks at the clock


class LimitExceeded(Exception):
    """A render went past one of the limits; ``line`` is the template line (0: not known)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


def _too_long(size: int) -> LimitExceeded:
    return LimitExceeded(f"a text or list grows to {size:,} characters, past the {MAX_TEXT:,} characters "
                         "a template may build in one value")


def _too_big() -> LimitExceeded:
    return LimitExceeded(f"a number grows past {MAX_INT_BITS} bits (about {int(MAX_INT_BITS * 0.30103):,} digits), "
                         "the largest a template may compute")


class Budget:
    """What one render has spent; made by ``render_part``'s caller, one per letter."""

    __slots__ = ("loops", "built", "ticks", "cpu_limit", "started")

    def __init__(self, cpu_limit: float = MAX_CPU_SECONDS) -> None:
        self.loops = self.built = self.ticks = 0
        self.cpu_limit = cpu_limit
        # The CPU clock is read from the first check on (a system call of a few µs; most letters
        # never need one): the work before it is _CHECK_TIME_EVERY ticks at most.
        self.started: float | None = None

    def tick(self, line: int = 0) -> None:
        self.ticks += 1
        if not self.ticks % _CHECK_TIME_EVERY:
            now = time.thread_time()
            if self.started is None:
                self.started = now
            elif now - self.started > self.cpu_limit:
                raise LimitExceeded(f"the letter took more than {self.cpu_limit:g} s of CPU time, the most one "
                                    "letter may take", line)

    def add(self, size: int) -> None:
        self.built += size
        if self.built > MAX_BUILT:
            raise LimitExceeded(f"the template builds more than {MAX_BUILT >> 20} MiB of text in all, "
                                "the most one letter may")

    def loop(self, iterable: Iterable[Any], line: int) -> Iterator[Any]:
        for item in iterable:
            self.loops += 1
            if self.loops > MAX_LOOPS:
                raise LimitExceeded(f"the template repeats loops more than {MAX_LOOPS:,} times in all, "
                                    "the most one letter may", line)
            self.tick(line)
            yield item


_budget: ContextVar[Budget | None] = ContextVar("template_budget", default=None)


def _tick() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.tick()


def _weight(value: Any, limit: int = MAX_TEXT) -> int:
    """About how many characters ``str(value)`` makes, counted only up to ``limit`` (a list holding
    one long text a thousand times prints a thousand copies)."""
    if isinstance(value, (str, bytes)):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    if isinstance(value, dict):
        value = [item for pair in value.items() for item in pair]
    if isinstance(value, (list, tuple, set, frozenset)):
        total = 2
        for item in value:
            total += _weight(item, limit - total) + 2
            if total > limit:
                break
        return total
    return 16


def _checked(value: Any) -> Any:
    """A value just built: refused when too long or too big, else counted against the budget."""
    if isinstance(value, int):
        if value.bit_length() > MAX_INT_BITS:
            raise _too_big()
    elif isinstance(value, (str, bytes, list, tuple, dict, set)):
        if len(value) > MAX_TEXT:
            raise _too_long(len(value))
        budget = _budget.get()
        if budget is not None:
            budget.add(len(value))
    return value


def _guard_size(size: int) -> None:
    if size > MAX_TEXT:
        raise _too_long(size)


def _guard_weight(value: Any) -> Any:
    """For a value about to become text (printed, joined, formatted)."""
    if not isinstance(value, str):
        _guard_size(_weight(value))
    return value


_NUMBERS = re.compile(r"\d+")


def _guard_format(fmt: str, args: Iterable[Any]) -> None:
    """``fmt % args`` / ``fmt.format(*args)``: at most one argument's text per placeholder, plus the
    widths written in the format or passed as numbers."""
    values = list(args)
    widest = max((_weight(value) for value in values), default=0)
    widths = sum(int(n) for n in _NUMBERS.findall(fmt) if len(n) < 12) + sum(
        value for value in values if isinstance(value, int) and not isinstance(value, bool) and value > 0)
    if any(len(n) >= 12 for n in _NUMBERS.findall(fmt)):
        widths = MAX_TEXT + 1
    places = fmt.count("%") + fmt.count("{") + 1
    _guard_size(len(fmt) + places * (widest + widths))


def _guard_replace(text: str | bytes, old: Any, new: Any, count: int = -1) -> None:
    if isinstance(old, (str, bytes)) and isinstance(new, (str, bytes)) and len(new) > len(old):
        found = text.count(old) if old else len(text) + 1  # type: ignore[arg-type]
        if isinstance(count, int) and count >= 0:
            found = min(found, count)
        _guard_size(len(text) + found * (len(new) - len(old)))


def _guard_width(width: Any) -> None:
    if isinstance(width, int) and width > MAX_TEXT:
        raise _too_long(width)


def _guard_method(obj: Any, args: tuple, kwargs: dict) -> tuple:
    """Checks for the methods of texts and numbers that make a much larger result than their inputs;
    returns the arguments to call with (a consumed iterable becomes a list)."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, (str, bytes)):
        if name in ("ljust", "rjust", "center", "zfill") and args:
            _guard_width(args[0])
        elif name == "expandtabs":
            size = args[0] if args else kwargs.get("tabsize", 8)
            if isinstance(size, int):
                _guard_size(len(owner) + owner.count("\t" if isinstance(owner, str) else b"\t") * size)
        elif name == "replace" and len(args) >= 2:
            _guard_replace(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count", -1))
        elif name == "join" and args:
            items = list(args[0])
            _guard_size(sum(_weight(item) for item in items) + len(owner) * len(items))
            args = (items,) + args[1:]
        elif name in ("format", "format_map") and isinstance(owner, str):
            _guard_format(owner, list(args) + list(kwargs.values()) + (
                list(args[0].values()) if name == "format_map" and args and isinstance(args[0], dict) else []))
        elif name == "translate" and args and isinstance(args[0], dict):
            _guard_size(len(owner) * max((_weight(v) for v in args[0].values()), default=1))
    elif isinstance(owner, int) and name == "to_bytes":
        _guard_width(args[0] if args else kwargs.get("length", 1))
    return args


# Filters whose result can be much larger than their input, with what to check first.
# A guard raises LimitExceeded, or returns the value to filter instead (a generator read into a list).
def _filter_guards() -> dict[str, Callable[..., Any]]:
    def replace(value: Any, old: Any, new: Any, count: Any = None, *_: Any, **__: Any) -> None:
        if isinstance(value, str) or hasattr(value, "__html__"):
            _guard_replace(str(value), str(old), str(new), count if isinstance(count, int) else -1)

    def center(value: Any, width: Any = 80, *_: Any, **__: Any) -> None:
        _guard_width(width)

    def indent(value: Any, width: Any = 4, *_: Any, **__: Any) -> None:
        step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        _guard_size(_weight(value) + (str(value).count("\n") + 1) * step)

    def join(value: Any, d: Any = "", *_: Any, **__: Any) -> list:
        items = list(value)  # a generator is read once, here
        _guard_size(sum(_weight(item) for item in items) + _weight(d) * len(items))
        return items

    def counted(value: Any, count: Any = 1, *_: Any, **__: Any) -> None:
        _guard_width(count)

    def tojson(value: Any, indent: Any = None) -> None:
        _guard_width(indent)
        _guard_weight(value)

    def format_(value: Any, *args: Any, **kwargs: Any) -> None:
        _guard_format(str(value), list(args) + list(kwargs.values()))

    def text(value: Any, *_: Any, **__: Any) -> None:
        _guard_weight(value)

    def wordwrap(value: Any, width: Any = 79, *_: Any, **__: Any) -> None:
        _guard_size(_weight(value) * 2)

    def truncate(value: Any, length: Any = 255, killwords: Any = False, end: Any = "...", *_: Any, **__: Any) -> None:
        _guard_weight(end)

    guards: dict[str, Callable[..., Any]] = {
        "replace": replace, "center": center, "indent": indent, "join": join, "format": format_,
        "wordwrap": wordwrap, "truncate": truncate, "batch": counted, "slice": counted, "tojson": tojson,
    }
    for name in ("string", "pprint", "e", "escape", "forceescape", "urlencode", "xmlattr", "safe",
                 "upper", "lower", "title", "capitalize", "trim", "striptags", "urlize", "list", "sort", "unique",
                 "reverse", "dictsort", "items"):
        guards[name] = text
    return guards


def _bounded_filter(func: Callable[..., Any], guard: Callable[..., Any] | None) -> Callable[..., Any]:
    passes = getattr(func, "jinja_pass_arg", None)  # context / eval_context / environment go first

    @wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _tick()
        if guard is not None:
            first = 1 if passes else 0
            replaced = guard(*args[first:], **kwargs)
            if replaced is not None:
                args = args[:first] + (replaced,) + args[first + 1:]
        return _checked(func(*args, **kwargs))

    return bounded


class _Codegen(CodeGenerator):
    """Jinja's code generator without compile-time evaluation of output, and with ``~`` checked:
    a list printed a thousand times over is refused before it is made."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Frame, finalize: Any) -> str:
        if not isinstance(node, nodes.TemplateData):
            raise nodes.Impossible()
        return super()._output_child_to_const(node, frame, finalize)

    # Each printed value: a text as it is (the usual case, without a call), anything else weighed first.
    def _output_child_pre(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        super()._output_child_pre(node, frame, finalize)
        self.write("(_printed if (_printed := ")

    def _output_child_post(self, node: nodes.Expr, frame: Frame, finalize: Any) -> None:
        self.write(").__class__ is str else environment.printable(_printed))")
        super()._output_child_post(node, frame, finalize)

    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice):  # Jinja writes slices as plain Python: no hook
            return super().visit_Getitem(node, frame)
        self.write("environment.sliced(")
        self.visit(node.node, frame)
        self.write(", slice(")
        for n, bound in enumerate((node.arg.start, node.arg.stop, node.arg.step)):
            self.write(", " if n else "")
            if bound is None:
                self.write("None")
            else:
                self.visit(bound, frame)
        self.write("))")

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.joined((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("), context.eval_ctx.autoescape)")


class _Tracking(TrackingCodeGenerator, _Codegen):
    """The names a template reads, found without evaluating anything."""


class _CountedLoops(NodeTransformer):
    """Every ``for`` iterates through ``environment.counted_loop``, which counts its turns."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Call(nodes.EnvironmentAttribute("counted_loop"), [node.iter, nodes.Const(node.lineno)],
                               [], None, None, lineno=node.lineno)
        return node


def _power(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if (left.bit_length() - 1) * right >= MAX_INT_BITS + 1:  # a lower bound of the result's bits
            raise _too_big()
    return operator.pow(left, right)


def _times(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise _too_big()
    else:
        for seq, count in ((left, right), (right, left)):
            if isinstance(count, int) and count > 0 and isinstance(seq, (str, bytes, list, tuple)):
                each = len(seq) if isinstance(seq, (str, bytes)) else _weight(seq)
                _guard_size(each * count)
    return operator.mul(left, right)


def _plus(left: Any, right: Any) -> Any:
    if isinstance(left, (str, bytes, list, tuple)) and isinstance(right, (str, bytes, list, tuple)):
        _guard_size(len(left) + len(right))
    return operator.add(left, right)


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, str):
        _guard_format(left, right if isinstance(right, tuple) else [right])
    return operator.mod(left, right)


_BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "**": _power, "*": _times, "+": _plus, "%": _modulo, "-": operator.sub, "/": operator.truediv,
    "//": operator.floordiv,
}


class LimitedSandbox(SandboxedEnvironment):
    """Jinja2's sandbox with the limits above; renders through ``render_part``."""

    code_generator_class = _Codegen
    intercepted_binops = frozenset(_BINOPS)  # also keeps them from being folded at compile time

    def __init__(self, **options: Any) -> None:
        options.setdefault("optimized", False)
        super().__init__(**options)
        self.concat = self._joined_buffer  # macros, {% set %} blocks, {% filter %} blocks
        guards = _filter_guards()
        self.filters = {name: _bounded_filter(func, guards.get(name)) for name, func in self.filters.items()}

    def _generate(self, source: nodes.Template, name: str | None, filename: str | None,
                  defer_init: bool = False) -> str:
        return super()._generate(_CountedLoops().visit(source), name, filename, defer_init)

    printable = staticmethod(_guard_weight)

    @staticmethod
    def _joined_buffer(parts: Iterable[str]) -> str:
        parts = list(parts)
        _guard_size(sum(map(len, parts)))
        return "".join(parts)

    @staticmethod
    def joined(values: tuple, autoescape: bool) -> str:
        _guard_size(sum(_weight(value) for value in values))
        return _checked((markup_join if autoescape else str_join)(values))

    def counted_loop(self, iterable: Iterable[Any], line: int) -> Iterable[Any]:
        budget = _budget.get()
        return iterable if budget is None else budget.loop(iterable, line)

    def call_binop(self, context: Any, op: str, left: Any, right: Any) -> Any:
        _tick()
        return _checked(_BINOPS[op](left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's names)
        _tick()
        if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level counts too
            budget = _budget.get()
            if budget is not None:
                args = (budget.loop(args[0], 0),) + args[1:]
        args = _guard_method(__obj, args, kwargs)
        return _checked(super().call(__context, __obj, *args, **kwargs))

    @staticmethod
    def sliced(obj: Any, bounds: slice) -> Any:
        _tick()
        return _checked(obj[bounds])

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``"…".format(…)``: the sandbox hands out its own safe wrapper; it gets our size check too."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt, name = str(value.__self__), value.__name__

        @wraps(wrapped)
        def checked(*args: Any, **kwargs: Any) -> str:
            values = list(args) + list(kwargs.values())
            if name == "format_map" and args and isinstance(args[0], Mapping):
                values += list(args[0].values())
            _guard_format(fmt, values)
            return wrapped(*args, **kwargs)

        return checked

    def undeclared_variables(self, tree: nodes.Template) -> set[str]:
        """The variables a parsed template reads, like jinja2.meta's, but never folding a constant."""
        tracker = _Tracking(self)
        tracker.visit(tree)
        return tracker.undeclared_identifiers


def _template_line(exc: BaseException) -> int:
    """The template line an exception came from: its last frame in a template's code."""
    line = 0
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if template is not None:
            line = template.get_corresponding_lineno(tb.tb_lineno)
        tb = tb.tb_next
    return line


def render_part(template: Any, context: dict[str, Any], budget: Budget, part: str = "part") -> str:
    """One part rendered within ``budget``, its output streamed and cut at MAX_OUTPUT characters."""
    token = _budget.set(budget)
    stream = template.root_render_func(template.new_context(context))
    chunks: list[str] = []
    append = chunks.append
    size = 0
    try:
        for chunk in stream:
            size += len(chunk)
            if size > MAX_OUTPUT:
                break
            append(chunk)
        else:
            return "".join(chunks)
        raise LimitExceeded(f"the {part} grows past {MAX_OUTPUT >> 20} MiB ({MAX_OUTPUT:,} characters), "
                            "the most one part of a letter may have", _suspended_line(template, stream))
    except LimitExceeded as exc:
        if not exc.line:
            exc.line = _template_line(exc)
        raise
    except Exception:  # noqa: BLE001 (Jinja re-raises it with the template's lines in the traceback)
        template.environment.handle_exception()
        raise
    finally:
        stream.close()
        _budget.reset(token)


def _suspended_line(template: Any, stream: Any) -> int:
    """The template line a paused render stands at (innermost generator of `yield from`s)."""
    frame = None
    while stream is not None and getattr(stream, "gi_frame", None) is not None:
        frame = stream.gi_frame
        stream = stream.gi_yieldfrom
    if frame is None:
        return 0
    try:
        return template.get_corresponding_lineno(frame.f_lineno)
    except Exception:  # noqa: BLE001 (a line number is a courtesy)
        return 0

"""Parse display-filter tokens into a tree (no evaluation, no field lookups).

Grammar (Wireshark 4.0; ``not`` binds tighter than ``and``, which binds tighter than ``or``)::

    filter   := expr EOF | EOF
    expr     := and_expr { ("or" | "||") and_expr }
    and_expr := unary { ("and" | "&&") unary }
    unary    := { "not" | "!" } primary
    primary  := "(" expr ")" | value [ relation ]
    relation := CMP value | "contains" value | ("matches" | "~") value
              | ["not" | "!"] "in" "{" element { "," element } "}"
    element  := value [ ".." value ]
    value    := atom { ("&" | "bitwise_and") atom }
    atom     := WORD | STRING | CHAR | FUNCTION "(" value ")"

Comparisons do not chain (``a == 1 == 2`` is an error, as in Wireshark).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import FilterError, quote
from .lexer import CHAR, EOF, OP, STRING, WORD, Token, tokenize

#: Parenthesis (and function) nesting deeper than this is refused, so parsing cannot exhaust the stack.
MAX_DEPTH = 64

#: Comparison spellings -> the canonical operator.
COMPARISONS = {
    "==": "==", "eq": "==", "any_eq": "==",
    "!=": "!=", "ne": "!=", "all_ne": "!=",
    "===": "===", "all_eq": "===",
    "!==": "!==", "~=": "!==", "any_ne": "!==",
    "<": "<", "lt": "<", "<=": "<=", "le": "<=",
    ">": ">", "gt": ">", ">=": ">=", "ge": ">=",
}
FUNCTIONS = frozenset({"len", "count", "upper", "lower", "string"})
KEYWORDS = frozenset({"and", "or", "not", "in", "contains", "matches", "bitwise_and",
                      *(word for word in COMPARISONS if word.isalpha() or "_" in word)})


# -- the tree -------------------------------------------------------------------------------------

@dataclass(slots=True)
class Node:
    start: int  # 0-based offset of the node's first character
    end: int  # offset one past its last character


@dataclass(slots=True)
class Word(Node):
    """An unquoted word: a field name, a number, a byte string, a value name, True/False."""

    text: str = ""


@dataclass(slots=True)
class Str(Node):
    """A double-quoted string; ``value`` is its bytes after escapes."""

    value: bytes = b""
    raw: bool = False


@dataclass(slots=True)
class Char(Node):
    """A character constant such as ``'a'``: an integer."""

    value: int = 0


@dataclass(slots=True)
class Call(Node):
    """``len(x)``, ``count(x)``, ``upper(x)``, ``lower(x)``, ``string(x)``."""

    func: str = ""
    arg: Node | None = None


@dataclass(slots=True)
class BitAnd(Node):
    """``value & mask``."""

    left: Node | None = None
    mask: Node | None = None


@dataclass(slots=True)
class Exists(Node):
    """A value on its own: the field is present (for ``&``: some occurrence is non-zero)."""

    value: Node | None = None


@dataclass(slots=True)
class Compare(Node):
    op: str = "=="
    left: Node | None = None
    right: Node | None = None
    op_start: int = 0


@dataclass(slots=True)
class Contains(Node):
    left: Node | None = None
    right: Node | None = None
    op_start: int = 0


@dataclass(slots=True)
class Matches(Node):
    left: Node | None = None
    right: Node | None = None
    op_start: int = 0


@dataclass(slots=True)
class Member(Node):
    """``left in {elements}``; each element is (value, None) or a range (low, high)."""

    left: Node | None = None
    elements: list[tuple[Node, Node | None]] = field(default_factory=list)
    op_start: int = 0


@dataclass(slots=True)
class Not(Node):
    item: Node | None = None


@dataclass(slots=True)
class And(Node):
    items: list[Node] = field(default_factory=list)


@dataclass(slots=True)
class Or(Node):
    items: list[Node] = field(default_factory=list)


def render(node: Node | None) -> str:
    """A fully parenthesised form of the tree, for tests and debugging."""
    match node:
        case None:
            return "TRUE"
        case Word(text=text):
            return text
        case Str(value=value, raw=raw):
            return ("r" if raw else "") + '"' + value.decode("utf-8", "backslashreplace") + '"'
        case Char(value=value):
            return f"'\\x{value:02x}'"
        case Call(func=func, arg=arg):
            return f"{func}({render(arg)})"
        case BitAnd(left=left, mask=mask):
            return f"({render(left)} & {render(mask)})"
        case Exists(value=value):
            return render(value)
        case Compare(op=op, left=left, right=right):
            return f"({render(left)} {op} {render(right)})"
        case Contains(left=left, right=right):
            return f"({render(left)} contains {render(right)})"
        case Matches(left=left, right=right):
            return f"({render(left)} matches {render(right)})"
        case Member(left=left, elements=elements):
            shown = ", ".join(render(lo) if hi is None else f"{render(lo)}..{render(hi)}" for lo, hi in elements)
            return f"({render(left)} in {{{shown}}})"
        case Not(item=item):
            return f"(not {render(item)})"
        case And(items=items):
            return "(" + " and ".join(render(item) for item in items) + ")"
        case Or(items=items):
            return "(" + " or ".join(render(item) for item in items) + ")"
    raise TypeError(node)


# -- the parser -----------------------------------------------------------------------------------

def parse(text: str) -> Node | None:
    """The tree of ``text`` (None for an empty filter); FilterError with a column otherwise."""
    return _Parser(text).parse()


def _describe(token: Token) -> str:
    if token.kind == EOF:
        return "the end of the filter"
    return quote(token.text)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.index = 0
        self.depth = 0

    # token helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.index]

    def peek(self, ahead: int = 1) -> Token:
        return self.tokens[min(self.index + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        token = self.tokens[self.index]
        if token.kind != EOF:
            self.index += 1
        return token

    def is_op(self, *symbols: str) -> bool:
        return self.tok.kind == OP and self.tok.text in symbols

    def is_word(self, *words: str) -> bool:
        return self.tok.kind == WORD and self.tok.text in words

    def fail(self, message: str, token: Token | None = None, *, start: int | None = None,
             length: int | None = None) -> FilterError:
        token = token or self.tok
        start = token.start if start is None else start
        if length is None:
            length = max(1, token.end - token.start)
        return FilterError(message, column=start + 1, text=self.text, length=length)

    # grammar
    def parse(self) -> Node | None:
        if self.tok.kind == EOF:
            return None
        node = self.expr()
        token = self.tok
        if token.kind != EOF:
            if token.kind == OP and token.text == ")":
                raise self.fail("unbalanced ')': there is no '(' to close")
            if self._relation_ahead() and self.tokens[self.index - 1].text == ")":
                raise self.fail(f"{quote(token.text)} needs a field on its left, not a parenthesised test")
            if self._relation_ahead():
                raise self.fail(f"comparisons cannot be chained: {quote(token.text)} follows a complete test;"
                                " combine tests with 'and' or 'or'")
            raise self.fail(f"unexpected {_describe(token)}: expected 'and', 'or' or the end of the filter")
        return node

    def expr(self) -> Node:
        items = [self.and_expr()]
        while self.is_word("or") or self.is_op("||"):
            self.advance()
            items.append(self.and_expr())
        if len(items) == 1:
            return items[0]
        return Or(items[0].start, items[-1].end, items)

    def and_expr(self) -> Node:
        items = [self.unary()]
        while self.is_word("and") or self.is_op("&&"):
            self.advance()
            items.append(self.unary())
        if len(items) == 1:
            return items[0]
        return And(items[0].start, items[-1].end, items)

    def unary(self) -> Node:
        nots: list[Token] = []
        while self.is_word("not") or self.is_op("!"):
            nots.append(self.advance())
        node = self.primary(nots[-1] if nots else None)
        if len(nots) % 2:  # 'not not x' is x: keep one Not at most, so the tree stays shallow
            node = Not(nots[0].start, node.end, node)
        return node

    def primary(self, after: Token | None) -> Node:
        token = self.tok
        if token.kind == OP and token.text == "(":
            self.enter(token)
            self.advance()
            if self.is_op(")"):
                raise self.fail("empty parentheses: expected a test between '(' and ')'")
            node = self.expr()
            if not self.is_op(")"):
                if self.tok.kind == EOF:
                    raise self.fail("unbalanced '(': it is never closed", token)
                if self._relation_ahead():
                    raise self.fail(f"comparisons cannot be chained: {quote(self.tok.text)} follows a complete test")
                raise self.fail(f"unexpected {_describe(self.tok)}: expected ')' to close the '(' at column "
                                f"{token.start + 1}")
            self.depth -= 1
            close = self.advance()
            node.start, node.end = token.start, close.end  # the parentheses belong to the node
            return node
        if self._relation_ahead(0):
            raise self.fail(f"{quote(token.text)} needs a field on its left")
        if token.kind == EOF or (token.kind == OP and token.text == ")") or self._is_keyword(token):
            what = f"after {quote(self._prev_text(after))}" if self.index else "at the start"
            if token.kind == OP and token.text == ")" and self.index and self.tokens[self.index - 1].text == "(":
                raise self.fail("empty parentheses: expected a test between '(' and ')'")
            raise self.fail(f"expected a field or '(' {what}, found {_describe(token)}")
        left = self.value("a field")
        return self.relation(left)

    def relation(self, left: Node) -> Node:
        token = self.tok
        word = token.text if token.kind in (WORD, OP) else ""
        if word in COMPARISONS:
            self.advance()
            right = self.value(f"a value after {quote(token.text)}")
            return Compare(left.start, right.end, COMPARISONS[word], left, right, token.start)
        if token.kind == WORD and word == "contains":
            self.advance()
            right = self.value("a value after 'contains'")
            return Contains(left.start, right.end, left, right, token.start)
        if (token.kind == WORD and word == "matches") or (token.kind == OP and word == "~"):
            self.advance()
            right = self.value(f"a regular expression after {quote(token.text)}")
            return Matches(left.start, right.end, left, right, token.start)
        negated = False
        if (self.is_word("not") or self.is_op("!")) and self.peek().kind == WORD and self.peek().text == "in":
            self.advance()
            negated = True
        if self.is_word("in"):
            node = self.member(left, token)
            return Not(left.start, node.end, node) if negated else node
        return Exists(left.start, left.end, left)

    def member(self, left: Node, op: Token) -> Member:
        self.advance()  # "in"
        brace = self.tok
        if not self.is_op("{"):
            raise self.fail(f"expected '{{' after 'in', found {_describe(brace)}")
        self.advance()
        if self.is_op("}"):
            raise self.fail("empty set: expected at least one value between '{' and '}'")
        elements: list[tuple[Node, Node | None]] = []
        while True:
            low = self.value("a value in the set")
            high = None
            if self.is_op(".."):
                self.advance()
                high = self.value("a value after '..'")
            elements.append((low, high))
            if self.is_op(","):
                self.advance()
                continue
            if self.is_op("}"):
                close = self.advance()
                return Member(left.start, close.end, left, elements, op.start)
            if self.tok.kind == EOF:
                raise self.fail("unbalanced '{': the set is never closed", brace)
            raise self.fail(f"expected ',' or '}}' in the set, found {_describe(self.tok)} "
                            "(set members are separated by commas)")

    def value(self, wanted: str) -> Node:
        node = self.atom(wanted)
        while self.is_op("&") or self.is_word("bitwise_and"):
            op = self.advance()
            mask = self.atom(f"a mask after {quote(op.text)}")
            node = BitAnd(node.start, mask.end, node, mask)
        return node

    def atom(self, wanted: str) -> Node:
        token = self.tok
        if token.kind == STRING:
            self.advance()
            return Str(token.start, token.end, token.value, token.raw)
        if token.kind == CHAR:
            self.advance()
            return Char(token.start, token.end, token.value)
        if token.kind == WORD and not self._is_keyword(token):
            self.advance()
            if self.is_op("(") and token.text in FUNCTIONS:
                self.enter(token)
                self.advance()
                if self.is_op(")"):
                    raise self.fail(f"{token.text}() needs a field between the parentheses")
                arg = self.value(f"a field inside {token.text}()")
                if not self.is_op(")"):
                    raise self.fail(f"expected ')' to close {token.text}(, found {_describe(self.tok)}")
                self.depth -= 1
                close = self.advance()
                return Call(token.start, close.end, token.text, arg)
            if self.is_op("("):
                raise self.fail(f"{quote(token.text)} is not a function (known: {', '.join(sorted(FUNCTIONS))})",
                                token)
            return Word(token.start, token.end, token.text)
        where = self.tok
        raise self.fail(f"expected {wanted}, found {_describe(where)}")

    # helpers
    def enter(self, token: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"nesting deeper than {MAX_DEPTH} levels", token)

    def _is_keyword(self, token: Token) -> bool:
        return token.kind == WORD and token.text in KEYWORDS

    def _relation_ahead(self, offset: int = 0) -> bool:
        token = self.peek(offset)
        if token.kind == OP:
            return token.text in COMPARISONS or token.text == "~"
        return token.kind == WORD and (token.text in COMPARISONS or token.text in ("contains", "matches", "in"))

    def _prev_text(self, after: Token | None) -> str:
        return (after or self.tokens[self.index - 1]).text

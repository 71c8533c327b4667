"""Command-line overrides with non-ASCII values, as users type them.

Hydra's override grammar (hydra/grammar/OverrideLexer.g4) lets an unquoted value hold only ASCII
letters, digits and a few signs, so `data.text_column=评论` stops with a lexer error unless the
value is quoted (`data.text_column='评论'`). Before Hydra parses the command line, the entry
points quote every value element that holds a non-ASCII character, keeping the syntax around it:
sweep commas (`-m data.text_column=评论,标题`), lists (`data.label_names=[正面,负面]`), dicts
(`{a:正面}`; dict keys themselves must stay ASCII in Hydra's grammar), function calls
(`choice(评论,标题)`) and parts that are already quoted or interpolations.
"""

from __future__ import annotations

# Hydra options that take the next argument as their value (never an override).
_OPTIONS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                       "--config-dir", "-cd", "--info", "-i", "--experimental-rerun", "--shell-completion", "-sc"}
_ESCAPABLE = set("\\()[]{}:=, \t")  # what Hydra's ESC rule lets a backslash escape in an unquoted value


def quote_non_ascii(argv: list[str]) -> list[str]:
    """argv (program name first) with the values of `key=value` overrides quoted where they hold
    non-ASCII characters; everything else unchanged."""
    out, skip = list(argv[:1]), False
    for arg in argv[1:]:
        if skip or arg.startswith("-") or "=" not in arg or arg.isascii():
            out.append(arg)
            skip = not skip and arg in _OPTIONS_WITH_VALUE
            continue
        key, value = arg.split("=", 1)
        out.append(f"{key}={quote_value(value)}")
    return out


def quote_value(value: str) -> str:
    """An override value with each element that holds non-ASCII characters quoted."""
    if value.isascii():
        return value
    out: list[str] = []
    stack: list[list] = []  # open containers: ['[' | '{' | '(', whether a dict item's key has ended]
    atom: list[str] = []
    text_parens = 0  # parentheses that are part of an element's text, not a function call
    i, n = 0, len(value)

    def flush() -> None:
        text = "".join(atom)
        atom.clear()
        core = text.strip(" \t")
        if core.isascii() or core[:1] in "'\"":
            out.append(text)
            return
        lead = text[: len(text) - len(text.lstrip(" \t"))]
        trail = text[len(text.rstrip(" \t")):]
        out.append(lead + _quoted(core) + trail)

    while i < n:
        c = value[i]
        if c == "\\" and i + 1 < n:
            atom.append(value[i: i + 2])
            i += 2
            continue
        if c in "'\"" and not "".join(atom).strip(" \t"):  # a quoted element: copied as it is
            end = _closing_quote(value, i)
            atom.append(value[i: end + 1])
            i = end + 1
            continue
        if c == "$" and value.startswith("${", i):  # an interpolation: its braces are not containers
            end = _closing_brace(value, i + 1)
            atom.append(value[i: end + 1])
            i = end + 1
            continue
        inner = stack[-1] if stack else ["", False]
        structural = (c in ",[]{}" or (c == ":" and inner[0] == "{" and not inner[1])
                      or (c == "=" and inner[0] == "(") or (c == ")" and not text_parens and inner[0] == "(")
                      or (c == "(" and "".join(atom).strip().isidentifier()))
        if not structural:
            text_parens += (c == "(") - (c == ")" and text_parens > 0)
            atom.append(c)
            i += 1
            continue
        flush()
        out.append(c)
        if c in "[{(":
            stack.append([c, False])
        elif c in "]})" and stack:
            stack.pop()
        elif c == ":":
            inner[1] = True
        elif c == "," and stack:
            inner[1] = False
        i += 1
    flush()
    return "".join(out)


def _quoted(text: str) -> str:
    # Inside quotes Hydra's escapes are plain characters: undo them.
    plain, i = [], 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in _ESCAPABLE:
            plain.append(text[i + 1])
            i += 2
        else:
            plain.append(text[i])
            i += 1
    body = "".join(plain)
    quote = '"' if "'" in body and '"' not in body else "'"
    body = body.replace(quote, "\\" + quote)
    stripped = body.rstrip("\\")
    body = stripped + "\\" * (2 * (len(body) - len(stripped)))  # a trailing backslash must not escape the quote
    return quote + body + quote


def _closing_quote(value: str, start: int) -> int:
    quote, i = value[start], start + 1
    while i < len(value):
        if value[i] == "\\":
            i += 2
            continue
        if value[i] == quote:
            return i
        i += 1
    return len(value) - 1


def _closing_brace(value: str, start: int) -> int:
    depth, i = 0, start
    while i < len(value):
        if value[i] == "{":
            depth += 1
        elif value[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return len(value) - 1

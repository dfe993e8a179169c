#!/usr/bin/env python3
"""check_layers.py - the server's files keep the shape lib/srv.h gives them.

lib/srv.h lists the server's files from the bottom layer up (one
"/* srv_x.c */" heading per file over its shared prototypes). This checks:
  - every lib/srv_*.c is listed, and every listed prototype is defined in
    the file it is listed under;
  - a file calls (or takes the address of) only srv_ functions of the files
    listed before it; lib/server.c, the top, may call any;
  - no server file is over FILE_LINES_MAX lines, and no function in lib/,
    server/ or client/ is over FUNC_LINES_MAX lines, except those named in
    FUNC_EXCEPTIONS with the reason.
Run from the repository root; prints one line per check and a summary, and
exits 1 if any failed.
"""
import glob
import os
import re
import sys

FILE_LINES_MAX = 900
FUNC_LINES_MAX = 120
# Functions allowed over FUNC_LINES_MAX, each with why.
FUNC_EXCEPTIONS = {
    "usage": "serve's --help text: one string per option, nothing to split",
}


def strip(text):
    """Comments, strings and character literals blanked (lines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        if text.startswith("/*", i):
            j = text.index("*/", i) + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text[i] in "\"'":
            q, j = text[i], i + 1
            while text[j] != q:
                j += 2 if text[j] == "\\" else 1
            out.append(q + " " * (j - i - 1) + q)
            i = j + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def functions(code):
    """(name, first line, last line) of each function defined in code."""
    found = []
    lines = code.split("\n")
    depth, start, name = 0, None, None
    for no, line in enumerate(lines):
        if depth == 0 and start is None:
            m = re.match(r"^[A-Za-z_][\w \t\*]*?\b(\w+)\s*\(", line)
            if m and not line.rstrip().endswith(";"):
                start, name = no, m.group(1)
        opened = line.count("{")
        closed = line.count("}")
        if start is not None and depth == 0 and opened == 0 and line.rstrip().endswith(";"):
            start = None  # a prototype over several lines
        depth += opened - closed
        if start is not None and depth == 0 and closed > 0:
            found.append((name, start + 1, no + 1))
            start = None
    return found


def main():
    fails, passes = [], 0

    def check(ok, what):
        nonlocal passes
        if ok:
            passes += 1
            print("ok   - " + what)
        else:
            fails.append(what)
            print("FAIL - " + what)

    header = open("lib/srv.h").read()
    sections = re.split(r"\n/\* (srv_\w+|server)\.c \*/\n", header)
    order, declared = [], {}
    for k in range(1, len(sections), 2):
        f = sections[k]
        order.append(f)
        body = sections[k + 1].split("\n/* ----")[0]
        for m in re.finditer(r"\b(srv_\w+)\s*\(", strip(body)):
            declared[m.group(1)] = f
    present = sorted(os.path.basename(p)[:-2] for p in glob.glob("lib/srv_*.c"))
    missing = [f for f in present if f not in order]
    check(not missing, "every lib/srv_*.c is listed in lib/srv.h (%s)"
          % (", ".join(missing) if missing else "%d files" % len(present)))

    codes = {}
    for f in order:
        path = "lib/%s.c" % f
        if os.path.exists(path):
            codes[f] = strip(open(path).read())
    wrong = [n for n, f in declared.items()
             if f in codes and not re.search(r"^[\w \t\*]*\b%s\s*\([^;]*$" % n, codes[f], re.M)]
    check(not wrong, "each prototype is defined in the file srv.h lists it under%s"
          % (": " + ", ".join(sorted(wrong)) if wrong else ""))

    up = []
    for i, f in enumerate(order):
        if f == "server" or f not in codes:
            continue
        for n in sorted(set(re.findall(r"(?<![\w.>])(srv_\w+)\b", codes[f]))):
            g = declared.get(n)
            if g is not None and g != f and order.index(g) > i:
                up.append("%s.c calls %s (%s.c, above it)" % (f, n, g))
    check(not up, "calls point down the list in lib/srv.h%s" % ("".join("\n       " + u for u in up)))

    for f in order:
        path = "lib/%s.c" % f
        if os.path.exists(path):
            n = open(path).read().count("\n")
            check(n <= FILE_LINES_MAX, "%s: %d lines (at most %d)" % (path, n, FILE_LINES_MAX))

    long_ones = []
    for path in sorted(glob.glob("lib/*.c") + glob.glob("server/*.c") + glob.glob("client/*.c")):
        for name, a, b in functions(strip(open(path).read())):
            if b - a + 1 > FUNC_LINES_MAX and name not in FUNC_EXCEPTIONS:
                long_ones.append("%s:%d %s, %d lines" % (path, a, name, b - a + 1))
    check(not long_ones, "no function over %d lines%s" % (
        FUNC_LINES_MAX, "".join("\n       " + x for x in long_ones)))

    print("%d passed, %d failed" % (passes, len(fails)))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())

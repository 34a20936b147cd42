"""Compiles the web page into mailsrv.c (issue 16): web/index.html, app.css and app.js become
structs of char arrays between the BEGIN and END lines of section 12, so that mailsrv.c stays the
one file to copy and compile.

    python3 web/embed.py mailsrv.c          rewrite the block (`make page`)
    python3 web/embed.py --check mailsrv.c  exit 1 if the block is not what it would write

Each file is one struct whose members are chunks of at most 4,000 bytes, each initialized by the
literals of its lines, and an array of the chunks' lengths: C99 compilers need not take a literal
over 4,095 bytes (gcc -pedantic warns), and the chunks lie one after the other, each with its
NUL, with no pointer between them (an array of pointers to lines cost a pointer and a relocation
per line: 57 KB more in the binary). A static check proves the struct has no padding. Bytes beyond ASCII are written as octal escapes (the
compiler's source character set may not be UTF-8), and '?' as '\\?' so that no trigraph forms."""
import os, sys
check = sys.argv[1:2] == ["--check"]
path = sys.argv[-1]
here = os.path.dirname(os.path.abspath(__file__))
FILES = [("index.html", "web_index_html"), ("app.css", "web_app_css"), ("app.js", "web_app_js")]
BEGIN = "/* BEGIN web/: written by `make page` from web/index.html, app.css and app.js; edit those */"
END = "/* END web/ */"

def literal(line):
    out = []
    for b in line:
        c = chr(b)
        if c == "\\": out.append("\\\\")
        elif c == '"': out.append('\\"')
        elif c == "?": out.append("\\?")
        elif c == "\n": out.append("\\n")
        elif c == "\t": out.append("\\t")
        elif 0x20 <= b < 0x7F: out.append(c)
        else: out.append("\\%03o" % b)
    return '"' + "".join(out) + '"'

CHUNK = 4000
block = [BEGIN]
for name, var in FILES:
    data = open(os.path.join(here, name), "rb").read()
    if b"\r" in data or b"\0" in data:
        sys.exit("web/%s: CR or NUL bytes" % name)
    pieces = []  # the lines, a line over CHUNK bytes cut
    for line in data.splitlines(keepends=True):
        pieces += [line[i:i + CHUNK] for i in range(0, len(line), CHUNK)]
    chunks = [[]]
    for piece in pieces:
        if sum(map(len, chunks[-1])) + len(piece) > CHUNK:
            chunks.append([])
        chunks[-1].append(piece)
    sizes = [sum(map(len, c)) for c in chunks]
    block.append("static const struct {")
    block.append("    char %s;" % ", ".join("c%d[%d]" % (i, n + 1) for i, n in enumerate(sizes)))
    block.append("} %s = {" % var)
    for i, c in enumerate(chunks):
        for k, piece in enumerate(c):
            block.append("    " + literal(piece) + ("," if k == len(c) - 1 and i < len(chunks) - 1 else ""))
    block.append("};")
    block.append("static const unsigned short %s_chunks[] = {%s, 0};" % (var, ", ".join(map(str, sizes))))
    block.append("typedef char %s_is_whole[sizeof %s == %d ? 1 : -1]; /* its chunks and their NULs, no padding */"
                 % (var, var, len(data) + len(chunks)))
block.append(END)
text = open(path).read()
if BEGIN not in text or END not in text:
    sys.exit("%s: no %s ... %s lines to write between" % (path, BEGIN, END))
a = text.index(BEGIN)
b = text.index(END) + len(END)
new = text[:a] + "\n".join(block) + text[b:]
if check:
    if new != text:
        sys.exit("%s: the web page in it is not web/'s: run `make page`" % path)
    sys.exit(0)
if new != text:
    open(path, "w").write(new)

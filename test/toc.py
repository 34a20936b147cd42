"""mailsrv.c's table of contents: one prototype per function, by section (issue 13).

    python3 test/toc.py mailsrv.c          rewrite the block (`make toc`)
    python3 test/toc.py --check mailsrv.c  exit 1 if the block is not what it would write (`make portcheck`)

Functions defined only under a build condition (one platform, TLS only) are internal
to their section and left out; those defined in every build (outside any #if, or in
both branches of one top-level #if/#else) are listed once. The
structs the prototypes take are declared first; enums they take by value must be
defined above the block (section 2)."""
import re, sys, collections
check = sys.argv[1:2] == ["--check"]
path = sys.argv[-1]
text = original = open(path).read()
BEGIN = '/*==== Contents: every function, by section ====*/'
END = '/* ---- end of contents ---- */'
if BEGIN in text:  # regenerate: drop the old block first
    a = text.index(BEGIN); b = text.index(END) + len(END) + 1
    while text[b] == '\n': b += 1
    text = text[:a] + text[b:]
src = text.split('\n')
def uncomment(line):
    return re.sub(r'/\*.*?\*/', '', line).rstrip()
sec = None; stack = []; defs = collections.OrderedDict(); titles = {}
i = 0
def add(name, sig, line):
    cond = tuple(stack)
    if name in defs:
        defs[name]['conds'].append(cond)
    else:
        defs[name] = dict(sec=sec, sig=sig, conds=[cond], line=line)
while i < len(src):
    L = src[i]
    m = re.match(r'/\*==== (\d+)\. (.*) ====\*/', L)
    if m: sec = int(m.group(1)); titles[sec] = m.group(2)
    if re.match(r'#\s*if', L): stack.append(L.split('/*')[0].strip())
    elif re.match(r'#\s*elif', L): stack[-1] += ' (elif)'  # a third branch: never "every build"
    elif re.match(r'#\s*else', L): stack[-1] += ' (else)'
    elif re.match(r'#\s*endif', L): stack.pop()
    if re.match(r'static\b[^;(=]*$', L) and i + 1 < len(src) and re.match(r'\w+\(', src[i + 1]):
        j = i + 1; sig = uncomment(src[j])
        while not sig.endswith(')'):
            j += 1
            if j > i + 8 or src[j].startswith(('#', '{', '/*====')):
                sys.exit("%s:%d: cannot read this function's parameter list" % (path, i + 2))
            sig += ' ' + uncomment(src[j]).strip()
        if src[j + 1].strip() == '{':
            add(re.match(r'(\w+)\(', sig).group(1), L.strip() + ' ' + re.sub(r'\s+', ' ', sig.strip()), i + 1)
        i = j + 1; continue
    m = re.match(r'(static (?!const \w+ \w+\[)[^=;{]*?\b(\w+)\([^{]*?\))\s*\{.*\}\s*(/\*.*\*/)?\s*$', L)
    if m: add(m.group(2), m.group(1), i + 1)
    i += 1
def everywhere(conds):
    # defined outside any condition, or in the two branches of one #if/#else at the top level
    if any(not c for c in conds): return True
    if len(conds) == 2 and len(conds[0]) == len(conds[1]) == 1:
        a, b = conds[0][-1], conds[1][-1]
        return a + ' (else)' == b or b + ' (else)' == a
    return False
out = [BEGIN,
       '/*',
       ' * One prototype for each function of sections 3-16, in the order of the',
       ' * file: the table of contents, and what lets any function call any other',
       ' * wherever it stands. Helpers that exist in one build only (one',
       ' * platform, TLS) are left to their section. `make toc` writes this block.',
       ' */',
       '']
bysec = collections.OrderedDict()
for name, d in defs.items():
    if d['sec'] is None or d['sec'] < 3 or not everywhere(d['conds']): continue
    bysec.setdefault(d['sec'], []).append(d['sig'] + ';')
structs = sorted(set(re.findall(r'struct (\w+)', ' '.join(' '.join(v) for v in bysec.values()))))
out.append('/* the structs they take, defined in their sections */')
line = ''
for n in structs:
    if len(line) + len(n) + 9 > 100: out.append(line.rstrip()); line = ''
    line += 'struct %s; ' % n
out += [line.rstrip(), '']
for s, sigs in bysec.items():
    out.append('/* %d. %s */' % (s, titles[s]))
    out += sigs
    out.append('')
out.append(END)
block = '\n'.join(out) + '\n\n'
anchor = text.index('/*==== 4. ')
text = text[:anchor] + block + text[anchor:]
if check:
    if text != original:
        sys.exit("%s: the table of contents is out of date: run `make toc`" % path)
else:
    open(path, 'w').write(text)
    print("%s: %d prototypes" % (path, sum(len(v) for v in bysec.values())))

#!/usr/bin/env python3
# Where the samples below one function go: `perf record --call-graph fp` of a build with
# RUSTFLAGS="-C force-frame-pointers=yes" CARGO_PROFILE_RELEASE_DEBUG=line-tables-only, then
#   perf script -F comm,ip,sym > p.txt; xtask/perf/under.py p.txt "Lxc as pve_exporter::collector::Collector>::collect" 2
import sys, collections
# under.py FILE ROOTSYM [depth]: samples whose stack has ROOTSYM; tally the frame just below it (callee path depth) and leaf
f, root = sys.argv[1], sys.argv[2]
depth = int(sys.argv[3]) if len(sys.argv) > 3 else 1
total = 0; hit = 0; callee = collections.Counter(); leaf = collections.Counter()
stack = []
def flush():
    global total, hit
    if not stack: return
    total += 1
    syms = [s for s in stack]  # leaf first
    for i, s in enumerate(syms):
        if root in s:
            hit += 1
            path = syms[max(0, i-depth):i][::-1]
            callee[' > '.join(p[:70] for p in path) or '(self)'] += 1
            leaf[syms[0][:90]] += 1
            break
for line in open(f):
    line = line.rstrip('\n')
    if not line.strip():
        flush(); stack = []; continue
    if line.startswith((' ', '\t')):
        parts = line.strip().split(None, 1)
        stack.append(parts[1] if len(parts) > 1 else parts[0])
    else:
        flush(); stack = []
flush()
print(f"total {total} samples, under {root}: {hit} ({100*hit/total:.1f}%)")
for k, v in callee.most_common(25): print(f"{100*v/total:6.2f}%  {k}")
print("-- leaves")
for k, v in leaf.most_common(25): print(f"{100*v/total:6.2f}%  {k}")

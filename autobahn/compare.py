#!/usr/bin/env python3
"""Compare Autobahn|Testsuite fuzzingclient results per case between agents.

Usage: compare.py [--allow 'CASE ...'] REPORT_DIR BASELINE=AGENT[,AGENT...] [BASELINE=AGENT...]

Reads REPORT_DIR/index.json (written by `wstest -m fuzzingclient`), prints the
behaviour counts of every agent, and lists each case whose "behavior" is worse
for AGENT than for its BASELINE (the same suite run directly against the same
backend), with the case's description and what the suite saw. Differences in
"behaviorClose" or the close code are listed as notes only.

--allow takes case ids or shell-style patterns (e.g. '7.9.* 3.2'): such a
case is still listed when worse, but does not fail the run.

Exit status: 0 when no case is worse (or all worse ones are allowed), 1 when
some case is, 2 on a missing or unreadable report (an agent with no results
counts as worse everywhere).
"""

import fnmatch
import json
import os
import sys

# Lower is better. INFORMATIONAL is the verdict of cases that have no right
# answer (e.g. 7.1.6, 7.13.*): it ranks with OK. Anything unknown ranks worst.
RANK = {
    "OK": 0,
    "INFORMATIONAL": 0,
    "NON-STRICT": 1,
    "UNIMPLEMENTED": 2,
    "WRONG CODE": 3,
    "UNCLEAN": 3,
    "FAILED": 4,
    "FAILED BY CLIENT": 4,
}
WORST = 9
ORDER = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "WRONG CODE",
         "UNCLEAN", "FAILED", "FAILED BY CLIENT"]


def case_key(case_id):
    out = []
    for part in case_id.split("."):
        try:
            out.append((0, int(part), ""))
        except ValueError:
            out.append((1, 0, part))
    return out


def rank(behavior):
    return RANK.get(behavior, WORST)


def load_case(report_dir, entry):
    """The per-case JSON report (description, expectation, result), or {}."""
    name = entry.get("reportfile")
    if not name:
        return {}
    try:
        with open(os.path.join(report_dir, name), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def allowed(case_id, patterns):
    return any(fnmatch.fnmatchcase(case_id, p) for p in patterns)


def compare(report_dir, index, base, agents, allow):
    """Print how each agent compares with base; (worse, not worse, status)."""
    status = 0
    cases = sorted(index[base], key=case_key)
    worse_total = 0
    not_worse_total = 0
    allowed_total = 0
    for agent in agents:
        results = index.get(agent, {})
        worse, notes = [], []
        for cid in cases:
            b0 = index[base][cid]
            b1 = results.get(cid)
            if b1 is None:
                worse.append((cid, b0, {"behavior": "MISSING"}))
                continue
            if rank(b1.get("behavior")) > rank(b0.get("behavior")):
                worse.append((cid, b0, b1))
            elif (b1.get("behaviorClose") != b0.get("behaviorClose")
                  or b1.get("remoteCloseCode") != b0.get("remoteCloseCode")
                  or b1.get("behavior") != b0.get("behavior")):
                notes.append((cid, b0, b1))
        n_allowed = sum(1 for w in worse if allowed(w[0], allow))
        worse_total += len(worse) - n_allowed
        allowed_total += n_allowed
        not_worse_total += len(cases) - len(worse)

        if notes:
            print(f"{agent}: {len(notes)} case(s) differ from {base} but are not worse:")
            groups = {}
            for cid, b0, b1 in notes:
                key = (f"behavior {b0.get('behavior')} -> {b1.get('behavior')}, "
                       f"close {b0.get('behaviorClose')} -> {b1.get('behaviorClose')}, "
                       f"close code {b0.get('remoteCloseCode')} -> {b1.get('remoteCloseCode')}")
                groups.setdefault(key, []).append(cid)
            for key, cids in groups.items():
                print(f"  {key}: {len(cids)} case(s): {' '.join(cids)}")
            print()
        if not worse:
            print(f"{agent}: no case worse than {base} ({len(cases)} cases)")
            continue
        unallowed = [w for w in worse if not allowed(w[0], allow)]
        if unallowed:
            status = 1
        print(f"{agent}: {len(worse)} case(s) WORSE than {base}"
              + (f" ({len(worse) - len(unallowed)} of them allowed by --allow)" if allow else "") + ":")
        for cid, b0, b1 in worse:
            if allowed(cid, allow):
                print(f"  {cid}: (allowed) {b0.get('behavior')} directly, {b1.get('behavior')} through {agent}")
                continue
            rep = load_case(report_dir, b1) or load_case(report_dir, b0)
            print(f"  {cid}: {b0.get('behavior')} directly, {b1.get('behavior')} through {agent}"
                  f" (close: {b0.get('behaviorClose')} -> {b1.get('behaviorClose')},"
                  f" remote close code {b0.get('remoteCloseCode')} -> {b1.get('remoteCloseCode')})")
            if rep:
                print(f"      description: {one_line(rep.get('description', ''))}")
                print(f"      expectation: {one_line(rep.get('expectation', ''))}")
                r1 = load_case(report_dir, b1)
                if r1:
                    print(f"      result ({agent}): {one_line(r1.get('result', ''))}")
                    if r1.get("resultClose"):
                        print(f"      close result ({agent}): {one_line(r1.get('resultClose', ''))}")
            if b1.get("reportfile"):
                print(f"      report: {os.path.join(report_dir, b1['reportfile'])}")
        print()

    return worse_total, not_worse_total, allowed_total, status


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    allow = []
    if len(argv) > 2 and argv[1] == "--allow":
        allow = argv[2].split()
        argv = argv[:1] + argv[3:]
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    report_dir = argv[1]
    pairs = []
    for arg in argv[2:]:
        base, _, agents = arg.partition("=")
        pairs.append((base, [a for a in agents.split(",") if a]))
    try:
        with open(os.path.join(report_dir, "index.json"), encoding="utf-8") as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        print(f"autobahn: cannot read {report_dir}/index.json: {e}")
        return 2
    all_agents = []
    for base, agents in pairs:
        for a in [base] + agents:
            if a not in all_agents:
                all_agents.append(a)
    print()
    print(f"{'agent':<12} {'cases':>5}  " + "  ".join(f"{b:>{max(len(b), 3)}}" for b in ORDER) + "  other")
    for agent in all_agents:
        results = index.get(agent, {})
        counts = {b: 0 for b in ORDER}
        other = 0
        for entry in results.values():
            b = entry.get("behavior")
            if b in counts:
                counts[b] += 1
            else:
                other += 1
        print(f"{agent:<12} {len(results):>5}  "
              + "  ".join(f"{counts[b]:>{max(len(b), 3)}}" for b in ORDER) + f"  {other:>5}")
    print()

    status = 0
    worse_total = 0
    not_worse_total = 0
    allowed_total = 0
    for base, agents in pairs:
        if base not in index:
            print(f"autobahn: no results for the baseline agent {base!r}")
            return 2
        w, n, a, st = compare(report_dir, index, base, agents, allow)
        worse_total += w
        not_worse_total += n
        allowed_total += a
        status = max(status, st)

    # The plain closing line that CI reads: a case "passes" when it is not
    # worse through the proxy than directly; worse but allowed counts as
    # skipped.
    print(f"autobahn: {not_worse_total} passed, {worse_total} failed"
          + (f", {allowed_total} skipped" if allowed_total else ""))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))

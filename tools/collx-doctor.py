#!/usr/bin/env python3
"""collx-doctor DIR: what went wrong in a collx job, from its flight recorders' files.

Every communicator writes collx-trace.rank<R>.<pid>.<n>.json into COLLX_TRACE_DIR when a
call fails, on SIGUSR1, and at exit with COLLX_TRACE_AT_EXIT=1 (include/collx/core/
recorder.hpp). This reads them all and prints a verdict with its evidence:

  process   a rank left no file, or stopped long before the others (the process or its
            node died), or its peers' errors blame it (a dead or stalled rank);
  program   ranks called different collectives, counts or types at the same call;
  straggler a rank enters calls later than the others by a margin (a slow process);
  healthy   nothing wrong in what the files hold.

Slow links need per-peer link counters, which the recorder does not keep yet.

  collx-doctor DIR            the verdict and the evidence, for people
  collx-doctor --json DIR     the same as one JSON object, for scripts
"""

import argparse
import glob
import json
import os
import re
import statistics
import sys


def load(directory):
    """The newest file of each rank: {rank: trace}."""
    by_rank = {}
    for path in glob.glob(os.path.join(directory, "collx-trace.rank*.json")):
        try:
            with open(path, encoding="utf-8") as f:
                t = json.load(f)
        except (OSError, ValueError) as e:
            print(f"collx-doctor: skipping {path}: {e}", file=sys.stderr)
            continue
        t["path"] = path
        r = t["rank"]
        if r not in by_rank or t["time_ns"] > by_rank[r]["time_ns"]:
            by_rank[r] = t
    return by_rank


def signature(e):
    text = f"{e['coll']}({e['type']}, count={e['count']}"
    if e["coll"] in ("all_reduce", "reduce_scatter", "reduce"):
        text += f", {e['op']}"
    if e["coll"] in ("broadcast", "reduce", "gather", "scatter"):
        text += f", root={e['root']}"
    return text + ")"


def ranks_text(ranks):
    """0-2,5 for [0, 1, 2, 5]."""
    ranks = sorted(ranks)
    parts, start = [], None
    for i, r in enumerate(ranks):
        if start is None:
            start = r
        if i + 1 == len(ranks) or ranks[i + 1] != r + 1:
            parts.append(str(start) if start == r else f"{start}-{r}")
            start = None
    word = "rank" if len(ranks) == 1 else "ranks"
    return f"{word} {','.join(parts)}"


def find_mismatch(traces):
    """The first call number at which the ranks' calls differ."""
    by_seq = {}
    for r, t in traces.items():
        for e in t["entries"]:
            by_seq.setdefault(e["seq"], {})[r] = signature(e)
    for seq in sorted(by_seq):
        groups = {}
        for r, sig in by_seq[seq].items():
            groups.setdefault(sig, []).append(r)
        if len(groups) > 1:
            ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), min(kv[1])))
            said = " and ".join(f"{ranks_text(rs)} called {sig}" for sig, rs in ordered)
            return {"seq": seq, "groups": {sig: sorted(rs) for sig, rs in ordered}, "text": f"at call #{seq} {said}"}
    return None


def blamed(traces):
    """The peers the failed ranks' errors name, with how many name each."""
    votes = {}
    for r, t in traces.items():
        m = re.search(r"\(peer (\d+)\)", t.get("error") or "")
        if m and int(m.group(1)) != r:
            p = int(m.group(1))
            votes.setdefault(p, []).append(r)
    return votes


def last_call(t):
    return t["entries"][-1] if t["entries"] else None


def stragglers(traces, min_calls=20):
    """Ranks that start calls late against the other ranks' median, over the calls all
    ranks finished: [(rank, median lateness ms, calls)]."""
    starts = {}
    for r, t in traces.items():
        for e in t["entries"]:
            if e["state"] == "done":
                starts.setdefault(e["seq"], {})[r] = e["start_ns"]
    common = [s for s in starts.values() if len(s) == len(traces)]
    if len(traces) < 3 or len(common) < min_calls:
        return []
    late = {r: [] for r in traces}
    for s in common:
        mid = statistics.median(s.values())  # of every rank: the straggler moves it least
        for r, v in s.items():
            late[r].append((v - mid) / 1e6)
    found = []
    medians = {r: statistics.median(v) for r, v in late.items()}
    typical = statistics.median(abs(m) for m in medians.values())
    for r, m in medians.items():
        if m > max(1.0, 5 * typical):
            found.append((r, m, len(late[r])))
    return sorted(found, key=lambda x: -x[1])


def diagnose(traces):
    if not traces:
        return {"class": "none", "verdict": "no trace files (is COLLX_TRACE_DIR set for every rank?)", "evidence": []}
    size = max(t["size"] for t in traces.values())
    evidence = []
    for r in sorted(traces):
        t = traces[r]
        e = last_call(t)
        where = f"last call #{e['seq']} {signature(e)} {e['state']}" if e else "no call"
        err = f"; error {t['error_kind']}: {t['error']}" if t.get("error") else ""
        evidence.append(f"rank {r} ({t['host']}, pid {t['pid']}, {t['reason']}): {t['calls']} calls, {where}{err}")
    missing = [r for r in range(size) if r not in traces]
    mismatch = find_mismatch(traces)
    votes = blamed(traces)
    latest = max(t["last_activity_ns"] for t in traces.values())
    quiet = [r for r, t in traces.items() if latest - t["last_activity_ns"] > 5e9]

    if mismatch:
        return {"class": "program", "rank": None, "verdict": f"the program: {mismatch['text']}",
                "evidence": evidence, "mismatch": mismatch}
    if any(t.get("error_kind") == "mismatch" for t in traces.values()):
        return {"class": "program", "rank": None,
                "verdict": "the program: the ranks called different collectives (each says mismatch; "
                "the calls that differ are older than the kept ones)", "evidence": evidence}
    if missing:
        r = missing[0]
        before = [last_call(t)["seq"] for t in traces.values() if last_call(t)]
        at = f" at call #{max(before)}" if before else ""
        named = f"; the others' errors name it ({ranks_text(votes[r])})" if r in votes else ""
        return {"class": "process", "rank": r,
                "verdict": f"a process died: {ranks_text(missing)} left no trace, while the others failed{at}{named}",
                "evidence": evidence}
    if votes:
        r = max(votes, key=lambda p: len(votes[p]))
        kinds = sorted({traces[q]["error_kind"] for q in votes[r]})
        mine = traces.get(r, {})
        said = f"; rank {r} itself says {mine['error_kind']}" if mine.get("error_kind") else ""
        return {"class": "process", "rank": r,
                "verdict": f"rank {r} is where the waits end: {ranks_text(votes[r])} failed naming it "
                f"({', '.join(kinds)}){said}", "evidence": evidence}
    # Only where no error names a rank: a rank that came late past its peers' timeout is
    # the one with the latest activity, and its peers' errors name it.
    if quiet:
        r = min(quiet, key=lambda q: traces[q]["last_activity_ns"])
        e = last_call(traces[r])
        return {"class": "process", "rank": r,
                "verdict": f"rank {r} stopped at call #{e['seq'] if e else '?'}, "
                f"{(latest - traces[r]['last_activity_ns']) / 1e9:.1f} s before the others: the process stalled or died",
                "evidence": evidence}
    slow = stragglers(traces)
    if slow:
        r, m, n = slow[0]
        return {"class": "straggler", "rank": r,
                "verdict": f"rank {r} is a straggler: it started its calls a median {m:.1f} ms after the other "
                f"ranks, over {n} calls", "evidence": evidence}
    running = [r for r, t in traces.items() if last_call(t) and last_call(t)["state"] == "running"]
    if running:
        return {"class": "hang", "rank": None,
                "verdict": f"{ranks_text(running)} are inside a call, none has failed yet: a hang in progress, "
                "or a dump taken while calls ran", "evidence": evidence}
    return {"class": "healthy", "rank": None, "verdict": "nothing wrong in the kept calls", "evidence": evidence}


def main():
    ap = argparse.ArgumentParser(description="what went wrong in a collx job, from its trace files")
    ap.add_argument("dir", help="the job's COLLX_TRACE_DIR")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    d = diagnose(load(a.dir))
    if a.json:
        print(json.dumps(d, indent=1))
    else:
        print(f"collx-doctor: {d['class']}: {d['verdict']}")
        for line in d["evidence"]:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Lines up the slice timelines of a multicast's nodes and says where the time went.

Input: the CSV files the executor writes with its timeline on (`modelcast-fabric-node
--timeline`, `fabric_p2p --timeline`, `fabric_multicast --timeline`): node,slice,peer,stage,at,
with CLOCK_MONOTONIC seconds, so files from processes on one machine line up.

Per link (sender -> receiver), per slice, the time between stages:
  posted -> announced   the send handed to the transport until its header reached the receiver
  announced -> admitted the receiver holding it back (its receive window)
  admitted -> landed    the payload moving (messages)
  landed -> verified    the checksum (and the caller keeping it)
  posted -> confirmed   the sender's view of the whole send
and per relay the forward delay: a slice verified until the same node posts it onward (negative
where a relay forwards a slice while it still arrives, in pieces). The link's idle share is the
part of its span (first post to last verified) with no payload moving to it.
`--slices K` also prints the first K slices' stages, in ms from the first post of the run.
`--tail K` follows the K slices verified last back to the source, hop by hop: where the end of a
multicast waited.
"""
import argparse
import collections
import csv
import sys

ORDER = ["posted", "announced", "admitted", "landed", "verified"]


def load(paths):
    marks = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                marks.append((row["node"], int(row["slice"]), row["peer"], row["stage"], float(row["at"])))
    if not marks:
        sys.exit("slice-timeline: no marks in " + ", ".join(paths))
    return marks


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def union_length(intervals):
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", nargs="+")
    ap.add_argument("--slices", type=int, default=0, help="print the first K slices' stages per link")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON line too")
    ap.add_argument("--tail", type=int, default=0, help="follow the K slices verified last back to the source")
    args = ap.parse_args()
    marks = load(args.csv)
    t0 = min(at for (_, _, _, stage, at) in marks if stage == "posted")
    # (sender, receiver, slice) -> stage -> time; a resent slice keeps its last time per stage.
    link = collections.defaultdict(dict)
    for node, sl, peer, stage, at in marks:
        if stage in ("posted", "sent", "flushed", "confirmed"):
            link[(node, peer, sl)][stage] = at
        else:
            link[(peer, node, sl)][stage] = at
    links = collections.defaultdict(dict)
    for (s, r, sl), st in link.items():
        links[(s, r)][sl] = st
    summary = {}
    for (s, r), slices in sorted(links.items()):
        def deltas(a, b):
            return [(st[b] - st[a]) * 1e3 for st in slices.values() if a in st and b in st]

        rows = [("posted", "announced"), ("announced", "admitted"), ("admitted", "landed"), ("landed", "verified"),
                ("posted", "sent"), ("sent", "flushed"), ("posted", "confirmed"), ("posted", "verified")]
        print(f"{s} -> {r}: {len(slices)} slices")
        out = {}
        for a, b in rows:
            d = deltas(a, b)
            if not d:
                continue
            out[f"{a}->{b}"] = {"p50_ms": pct(d, 0.5), "p90_ms": pct(d, 0.9), "max_ms": max(d)}
            print(f"  {a:>9} -> {b:<9} p50 {pct(d, 0.5):8.2f} ms  p90 {pct(d, 0.9):8.2f} ms  max {max(d):8.2f} ms")
        moving = [(st["admitted"], st["landed"]) for st in slices.values() if "admitted" in st and "landed" in st]
        if not moving:  # writes: the payload moves from the post to its flush
            moving = [(st["posted"], st["flushed"]) for st in slices.values() if "posted" in st and "flushed" in st]
        first = min((st["posted"] for st in slices.values() if "posted" in st), default=None)
        last = max((st["verified"] for st in slices.values() if "verified" in st), default=None)
        if moving and first is not None and last is not None and last > first:
            busy = union_length(moving)
            out["span_ms"] = (last - first) * 1e3
            out["idle_share"] = 1 - busy / (last - first)
            print(f"  span {out['span_ms']:.1f} ms from the first post to the last verified; "
                  f"no payload moving for {100 * out['idle_share']:.1f} % of it")
        landed = sorted(st["verified"] for st in slices.values() if "verified" in st)
        gaps = sorted(((b - a) * 1e3, i) for i, (a, b) in enumerate(zip(landed, landed[1:])))
        if gaps:
            print(f"  between verified slices: p50 {pct([g for g, _ in gaps], 0.5):.2f} ms, "
                  f"largest {', '.join(f'{g:.1f}' for g, _ in gaps[-3:][::-1])} ms")
        if args.slices:
            print(f"  {'slice':>5} " + " ".join(f"{x:>10}" for x in ORDER + ["confirmed"]) + "   (ms from the first post)")
            for sl in sorted(slices)[: args.slices]:
                st = slices[sl]
                cells = [f"{(st[x] - t0) * 1e3:10.2f}" if x in st else f"{'-':>10}" for x in ORDER + ["confirmed"]]
                print(f"  {sl:>5} " + " ".join(cells))
        summary[f"{s}->{r}"] = out
    # Forward delay at relays: verified here -> posted onward by the same node.
    verified = {}
    for node, sl, peer, stage, at in marks:
        if stage == "verified":
            verified[(node, sl)] = at
    forward = collections.defaultdict(list)
    for node, sl, peer, stage, at in marks:
        if stage == "posted" and (node, sl) in verified:
            forward[node].append((at - verified[(node, sl)]) * 1e3)
    for node, d in sorted(forward.items()):
        print(f"{node} forwards: verified -> posted onward p50 {pct(d, 0.5):.2f} ms, p90 {pct(d, 0.9):.2f} ms, "
              f"max {max(d):.2f} ms over {len(d)} sends")
        summary[f"forward {node}"] = {"p50_ms": pct(d, 0.5), "p90_ms": pct(d, 0.9), "max_ms": max(d)}
    first_verified = collections.defaultdict(lambda: float("inf"))
    for node, sl, peer, stage, at in marks:
        if stage == "verified":
            first_verified[node] = min(first_verified[node], at)
    for node, at in sorted(first_verified.items()):
        print(f"{node}: first slice verified {1e3 * (at - t0):.1f} ms after the run's first post")
    if args.tail:
        last = sorted(((at, node, sl) for node, sl, peer, stage, at in marks if stage == "verified"))[-args.tail:]
        for at, node, sl in reversed(last):
            print(f"slice {sl} at {node}, verified {1e3 * (at - t0):.1f} ms after the first post; its path "
                  "(ms from the first post: posted, announced, landed, verified):")
            hops, here = [], node
            while True:
                sender = next((s for (s, r, x) in link if r == here and x == sl and "verified" in link[(s, r, x)]), None)
                if sender is None or len(hops) > 64:
                    break
                st = link[(sender, here, sl)]
                cells = " ".join(f"{(st[x] - t0) * 1e3:9.1f}" if x in st else f"{'-':>9}"
                                 for x in ("posted", "announced", "landed", "verified"))
                hops.append(f"  {sender:>8} -> {here:<8} {cells}")
                here = sender
            print("\n".join(reversed(hops)))
    if args.json:
        import json
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

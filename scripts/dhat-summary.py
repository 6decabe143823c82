#!/usr/bin/env python3
"""Summarises a dhat heap profile (dhat-heap.json, from the `dhat-heap` build of the
operator): where the bytes live at the peak (t-gmax) and at the end (t-end), and which
sites allocate the most over the run (churn).

    scripts/dhat-summary.py dhat-heap.json [--top 15]

A site is named by its first stack frame outside the allocator, the standard library's
collections and dhat itself, with the crate it belongs to; `--by crate` groups by crate.
"""
import argparse
import json
import re
from collections import defaultdict

SKIP = re.compile(
    r"dhat::|alloc::alloc|alloc::raw_vec|alloc::vec::|alloc::string::|alloc::boxed::|"
    r"alloc::collections::|hashbrown::raw|core::ptr|<alloc::|__rust|std::alloc|"
    r"alloc::sync::Arc<T>::new|alloc::fmt::format|<T as alloc::|"
    r"<alloc::string::String as|alloc::str::|alloc::slice::|core::iter|"
    r"<core::|core::ops::function"
)
CRATE = re.compile(r"^0x[0-9a-f]+: (?:<)?([a-z_][a-z0-9_]*)::")


def site(frames, ftbl):
    for index in frames:
        frame = ftbl[index]
        if frame == "[root]" or SKIP.search(frame):
            continue
        return frame
    return ftbl[frames[-1]] if frames else "[unknown]"


def crate_of(frame):
    m = CRATE.match(frame)
    return m.group(1) if m else "?"


def short(frame, width=110):
    frame = re.sub(r"^0x[0-9a-f]+: ", "", frame)
    frame = re.sub(r" \(.*/(src/[^)]*)\)$", r" (\1)", frame)
    return frame if len(frame) <= width else frame[: width - 1] + "…"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--by", choices=["site", "crate"], default="site")
    args = parser.parse_args()
    with open(args.profile) as f:
        profile = json.load(f)
    ftbl = profile["ftbl"]
    totals = defaultdict(lambda: {"tb": 0, "tbk": 0, "gb": 0, "eb": 0, "mb": 0})
    for pp in profile["pps"]:
        key = site(pp["fs"], ftbl)
        if args.by == "crate":
            key = crate_of(key)
        t = totals[key]
        for field in ("tb", "tbk", "gb", "eb", "mb"):
            t[field] += pp.get(field, 0)
    all_gb = sum(t["gb"] for t in totals.values())
    all_eb = sum(t["eb"] for t in totals.values())
    all_tb = sum(t["tb"] for t in totals.values())
    all_tbk = sum(t["tbk"] for t in totals.values())
    mib = lambda b: b / 1048576
    print(f"{profile.get('cmd', '')}")
    print(f"total allocated {mib(all_tb):,.1f} MiB in {all_tbk:,} blocks; "
          f"live at t-gmax {mib(all_gb):.1f} MiB; live at t-end {mib(all_eb):.1f} MiB")
    for field, title in (("gb", "live at the peak (t-gmax)"), ("eb", "live at the end (t-end)"),
                         ("tb", "allocated over the run (churn)")):
        print(f"\n{title}:")
        ranked = sorted(totals.items(), key=lambda kv: kv[1][field], reverse=True)
        whole = {"gb": all_gb, "eb": all_eb, "tb": all_tb}[field] or 1
        for key, t in ranked[: args.top]:
            print(f"  {mib(t[field]):9.2f} MiB {100 * t[field] / whole:5.1f}%  {short(key)}")


if __name__ == "__main__":
    main()

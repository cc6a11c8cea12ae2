#!/usr/bin/python3
"""Every measured figure the README quotes must be one docs/performance.md records.

    check-readme-figures.py README.md docs/performance.md

Reads the README's performance sections (SECTIONS below: the transports table, the
comparison with NCCL, Gloo and MPI, and "Performance"), takes every number or range
that carries a unit (us, ms, s, GB/s, Gbit/s, KiB, MiB, B, x, % ...), and looks for it in
performance.md:
- a range ("0.35-1.06 us", "20x-32x") must appear there as that range;
- a single number must appear there as a number that rounds to it at the README's
  precision (16.87 for "16.9 GB/s"); a ratio ("1.45x") only as a ratio.
It does not know which run or column a number came from: a figure that happens to
match an unrelated number of performance.md passes. Exit 1, naming each figure not
found (with its README line), when any is missing.
"""

import re
import sys

SECTIONS = ("Transports", "Compared with NCCL, Gloo and MPI", "Performance")
UNITS = r"(?:us|ms|ns|s|GB/s|MB/s|Gbit/s|KiB|MiB|GiB|B|%)"
NUM = r"\d+(?:\.\d+)?"
# A number, an optional x, an optional "-number[x]" (a range), then a unit unless an x.
FIGURE = re.compile(
    rf"(?<![\w.])(?P<lo>{NUM})(?P<lox>x?)(?:-(?P<hi>{NUM})(?P<hix>x?))?"
    rf"(?:(?<=x)(?![\w])|\s?(?P<unit>{UNITS})(?![\w/]))"
)


def sections(text):
    """(line number, line) of the README lines under the headings in SECTIONS."""
    keep = False
    fenced = False  # code blocks hold commands, not figures
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("## "):
            keep = line[3:].strip() in SECTIONS
        elif keep and not fenced:
            yield number, line


def figures(line):
    """The figures of one README line: (text, low, high or None, is a ratio)."""
    # Commands and code quoted inline are not figures (`-b 8 -e 64M`, `--alpha 2us`).
    line = re.sub(r"`[^`]*`", " ", line)
    # Links: their targets are not figures.
    line = re.sub(r"\]\([^)]*\)", "]", line)
    for m in FIGURE.finditer(line):
        ratio = m.group("lox") == "x" and m.group("unit") is None
        yield m.group(0).strip(), m.group("lo"), m.group("hi"), ratio


def recorded(perf):
    """performance.md's numbers, ratios and ranges, as text."""
    numbers = set(re.findall(rf"(?<![\w.]){NUM}(?![\d])", perf))
    ratios = set(re.findall(rf"(?<![\w.])({NUM})x(?![\w])", perf))
    # (low, high, "x" for a range of ratios, else "")
    ranges = set(re.findall(rf"(?<![\w.\-])({NUM})x?-({NUM})(x?)(?![\d.]*\d)", perf))
    return numbers, ratios, ranges


def decimals(s):
    return len(s.split(".")[1]) if "." in s else 0


def rounds_to(candidates, want):
    """Whether some recorded number is `want` at want's precision (16.87 for 16.9)."""
    places = decimals(want)
    for c in candidates:
        if c == want:
            return True
        if decimals(c) > places and round(float(c), places) == float(want):
            return True
    return False


def main(readme_path, perf_path):
    with open(readme_path, encoding="utf-8") as f:
        readme = f.read()
    with open(perf_path, encoding="utf-8") as f:
        perf = f.read()
    numbers, ratios, ranges = recorded(perf)
    missing = []
    checked = 0
    for number, line in sections(readme):
        for text, lo, hi, ratio in figures(line):
            checked += 1
            if hi is not None:
                found = (lo, hi, "x" if ratio else "") in ranges
            else:
                found = rounds_to(ratios if ratio else numbers, lo)
            if not found:
                missing.append(f"{readme_path}:{number}: '{text}' is not in {perf_path}")
    for m in missing:
        print(m)
    if missing:
        print(f"FAIL: {len(missing)} of {checked} figures are not recorded in {perf_path}")
        return 1
    print(f"OK: all {checked} figures of the README's performance sections are in {perf_path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2]))

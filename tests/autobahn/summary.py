"""Summarises an Autobahn|Testsuite report (index.json) per section; exits 1 on any case
that is not OK, NON-STRICT or INFORMATIONAL (for the behaviour and the close behaviour)."""
import collections
import json
import sys

GOOD = {"OK", "NON-STRICT", "INFORMATIONAL"}


def key(case):
    return tuple(int(part) for part in case.split("."))


def main(path):
    with open(path) as f:
        report = json.load(f)
    failures = []
    sections = collections.OrderedDict()
    for agent, cases in report.items():
        for case in sorted(cases, key=key):
            result = cases[case]
            section = case.split(".")[0]
            counts = sections.setdefault(section, collections.Counter())
            behaviour = result["behavior"]
            counts[behaviour] += 1
            if behaviour not in GOOD or result.get("behaviorClose") not in GOOD:
                failures.append((agent, case, behaviour, result.get("behaviorClose")))
    names = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED"]
    print("section " + " ".join("%13s" % n for n in names) + "  total")
    for section in sorted(sections, key=int):
        counts = sections[section]
        print("%7s " % section + " ".join("%13d" % counts[n] for n in names) + "  %5d" % sum(counts.values()))
    total = sum(sum(c.values()) for c in sections.values())
    if total == 0:
        print("no cases ran")
        return 1
    for agent, case, behaviour, close in failures:
        print("FAILED %s %s: behavior=%s behaviorClose=%s" % (agent, case, behaviour, close))
    print("%d cases, %d not OK" % (total, len(failures)))
    # The plain closing line CI reads: cases OK, NON-STRICT or INFORMATIONAL pass.
    print("%d passed, %d failed" % (total - len(failures), len(failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

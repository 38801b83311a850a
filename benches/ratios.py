#!/usr/bin/env python3
"""Print the criterion results of the last `cargo bench --bench proto` run as a Markdown table.

Each group's baseline is its bench whose name starts with `naive` (or `0_naive`); every other bench of the
group gets `baseline / time`, so 3.0x means three times faster than the naive path in the same run. Times
are criterion's median estimate. Usage: `python3 benches/ratios.py [target/criterion]`.
"""

import json
import pathlib
import sys


def fmt_ns(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.0f} ns"


def main() -> None:
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
    groups: dict[str, list[tuple[str, float]]] = {}
    for meta in sorted(root.glob("**/new/benchmark.json")):
        info = json.loads(meta.read_text())
        estimates = json.loads((meta.parent / "estimates.json").read_text())
        name = info["full_id"][len(info["group_id"]) + 1 :]
        groups.setdefault(info["group_id"], []).append((name, estimates["median"]["point_estimate"]))
    if not groups:
        sys.exit(f"no criterion results under {root}: run `cargo bench --bench proto` first")

    print("| group | bench | median | vs baseline |")
    print("| --- | --- | ---: | ---: |")
    for group, benches in groups.items():
        base = next((t for n, t in benches if n.lstrip("0_").startswith("naive")), None)
        # Baseline first, then the rest in name order.
        benches.sort(key=lambda b: (not b[0].lstrip("0_").startswith("naive"), b[0]))
        for name, ns in benches:
            if base is None:
                ratio = ""
            elif name.lstrip("0_").startswith("naive"):
                ratio = "baseline"
            else:
                ratio = f"{base / ns:.2f}x"
            print(f"| {group} | {name} | {fmt_ns(ns)} | {ratio} |")


if __name__ == "__main__":
    main()

"""The runs a benchmark of examples/benchmarks.sh wrote, one `LABEL {json}` line each, grouped by label."""
import json


def load(path):
    """{label: [report, ...]} in the order of the lines."""
    runs = {}
    with open(path) as lines:
        for line in lines:
            label, _, text = line.partition(" ")
            runs.setdefault(label, []).append(json.loads(text))
    return runs

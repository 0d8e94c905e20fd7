#!/usr/bin/env python3
"""Checks that the dashboards and alert rules use only metrics the binaries export.

Reads the PromQL of every `expr` in the Grafana dashboards (ops/grafana/*.json, panel
targets and `label_values(...)` variable queries) and in the alert rules
(ops/prometheus/alerts.yml), and extracts the metric names they reference: identifiers
that are not functions, aggregations, keywords, label names (inside `{...}`, `by (...)`,
`without (...)`, `on (...)`, `ignoring (...)`, `group_left/right (...)`), string literals,
numbers or durations (`[5m]`, `offset 1h`), nor Grafana variables (`$__rate_interval`,
`$instance`, `${datasource}`). A `{__name__="..."}` matcher counts as a name.

  ops/check_metric_names.py
      prints the referenced names, one a line (sorted, unique).
  ops/check_metric_names.py --metrics central.txt --metrics gate.txt
      reads Prometheus text-exposition files scraped from the real binaries (`/metrics` of
      the central's ops listener and of a gate; OpenMetrics or the classic text format) and
      exits 1 listing every referenced name that none of them exports. `up` and the other
      series Prometheus makes itself (`scrape_*`, `ALERTS`) are always allowed.
  ops/check_metric_names.py --emit-rules FILE
      writes the dashboards' expressions as recording rules (Grafana variables replaced by
      plain values), so `promtool check rules FILE` checks their syntax.

A name counts as exported when a sample of it is in a file, or when the file declares its
family with `# TYPE` (a family with no label set yet has no sample, e.g. decisions before the
first scan): in OpenMetrics (a file ending in `# EOF`) a counter `X` exports `X_total` (and
`X_created`), a histogram `X_bucket`, `X_sum`, `X_count`, a summary `X`, `X_sum`, `X_count`,
an info `X_info`, anything else `X`; in the classic format the `# TYPE` name is the sample
name (plus `_bucket`/`_sum`/`_count` for histograms and `_sum`/`_count` for summaries). A
histogram's base name counts as present when its `_bucket`, `_sum` or `_count` series is.

Standard library only (PyYAML is used for the rule files when it is installed, else a small
reader of `expr:` keys that handles plain, quoted and block scalars).
"""

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DASHBOARDS = sorted((ROOT / "ops" / "grafana").glob("*.json"))
DEFAULT_RULES = [ROOT / "ops" / "prometheus" / "alerts.yml"]

AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
    "and", "or", "unless", "atan2", "inf", "nan",
}
# Followed by a parenthesised list of label names.
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Series Prometheus makes itself, never in a binary's /metrics.
ALWAYS_ALLOWED = {
    "up", "scrape_duration_seconds", "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling", "scrape_series_added", "ALERTS",
    "ALERTS_FOR_STATE",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<variable>\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z0-9_:.]+\]\])
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:[a-zA-Z]+\d*)*)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^(){}\[\],=<>@!])
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    pass


def tokenize(expr):
    tokens = []
    pos = 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        if not match:
            raise PromQLError(f"cannot read {expr[pos:pos + 20]!r} in {expr!r}")
        kind = match.lastgroup
        if kind not in ("space", "comment"):
            tokens.append((kind, match.group()))
        pos = match.end()
    return tokens


def unquote(literal):
    if literal.startswith("`"):
        return literal[1:-1]
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def metric_names(expr):
    """The metric names a PromQL expression (possibly with Grafana variables) references."""
    tokens = tokenize(expr)
    names = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, None)
        if kind == "op" and text == "{":
            # Label matchers: skip them, except a `__name__="..."` one.
            j = i + 1
            while j < len(tokens) and tokens[j] != ("op", "}"):
                if (tokens[j] == ("ident", "__name__") and j + 2 < len(tokens)
                        and tokens[j + 1] == ("op", "=") and tokens[j + 2][0] == "string"):
                    names.add(unquote(tokens[j + 2][1]))
                j += 1
            if j == len(tokens):
                raise PromQLError(f"unclosed '{{' in {expr!r}")
            i = j + 1
            continue
        if kind == "op" and text == "[":
            # A range or subquery: durations, Grafana variables.
            j = i + 1
            while j < len(tokens) and tokens[j] != ("op", "]"):
                j += 1
            if j == len(tokens):
                raise PromQLError(f"unclosed '[' in {expr!r}")
            i = j + 1
            continue
        if kind == "ident":
            lowered = text.lower()
            if lowered in LABEL_LIST_KEYWORDS:
                if following == ("op", "("):
                    j = i + 2
                    while j < len(tokens) and tokens[j] != ("op", ")"):
                        j += 1
                    if j == len(tokens):
                        raise PromQLError(f"unclosed '(' after {text} in {expr!r}")
                    i = j + 1
                else:
                    i += 1
                continue
            if lowered in KEYWORDS or lowered in AGGREGATIONS:
                i += 1
                continue
            if following == ("op", "("):
                i += 1  # a function
                continue
            names.add(text)
        i += 1
    return names


def grafana_variable_query(query):
    """The PromQL inside a Grafana Prometheus variable query, or None."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query, re.S)
    if match:
        return match.group(1)
    match = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
    if match:
        return match.group(1)
    return None  # label_values(label), label_names(), metrics(regex): no metric name


def dashboard_exprs(path):
    """(where, expr) for every PromQL expression of a dashboard."""
    found = []
    board = json.loads(Path(path).read_text(encoding="utf-8"))

    name = Path(path).name

    def walk(node, where):
        if isinstance(node, dict):
            if "type" in node and "title" in node and ("targets" in node or "panels" in node):
                where = f"{name}: {node['title']}"
            expr = node.get("expr")
            if isinstance(expr, str) and expr.strip():
                found.append((where, expr))
            for key, value in node.items():
                if key != "templating":
                    walk(value, where)
        elif isinstance(node, list):
            for item in node:
                walk(item, where)

    walk(board, name)
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and isinstance(query, str):
            inner = grafana_variable_query(query)
            if inner:
                found.append((f"{name}: variable {variable.get('name')}", inner))
    return found


def yaml_exprs_fallback(text):
    """`expr:` values of a YAML file, without PyYAML (plain, quoted and block scalars)."""
    exprs = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$", lines[i])
        if not match:
            i += 1
            continue
        indent = len(match.group(1))
        value = match.group(2)
        if value[:1] in ("|", ">"):
            block = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            exprs.append(" ".join(part for part in block if part))
            continue
        if value.startswith('"'):
            exprs.append(json.loads(value))
        elif value.startswith("'"):
            exprs.append(value[1:-1].replace("''", "'"))
        else:
            value = re.sub(r"\s+#.*$", "", value)
            # a plain scalar may go on over more-indented lines
            i += 1
            while i < len(lines) and lines[i].strip() and \
                    len(lines[i]) - len(lines[i].lstrip()) > indent and ":" not in lines[i]:
                value += " " + lines[i].strip()
                i += 1
            exprs.append(value)
            continue
        i += 1
    return exprs


def rule_exprs(path):
    text = Path(path).read_text(encoding="utf-8")
    try:
        import yaml  # type: ignore
    except ImportError:
        return [(str(path), expr) for expr in yaml_exprs_fallback(text)]
    found = []
    for group in (yaml.safe_load(text) or {}).get("groups", []):
        for rule in group.get("rules", []):
            where = f"{Path(path).name}: {rule.get('alert') or rule.get('record')}"
            found.append((where, str(rule["expr"])))
    return found


def exported_names(path):
    """The series names an exposition file exports (see the module's doc)."""
    text = Path(path).read_text(encoding="utf-8")
    openmetrics = any(line.strip() == "# EOF" for line in text.splitlines())
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            match = re.match(r"#\s+TYPE\s+(\S+)\s+(\S+)", line)
            if not match:
                continue
            family, kind = match.groups()
            if kind == "counter":
                names.update({family + "_total", family + "_created"} if openmetrics else {family})
            elif kind in ("histogram", "gaugehistogram"):
                names.update({family} | {family + s for s in HISTOGRAM_SUFFIXES})
                if kind == "gaugehistogram":
                    names.update({family + "_gsum", family + "_gcount"})
            elif kind == "summary":
                names.update({family, family + "_sum", family + "_count"})
            elif kind == "info":
                names.add(family + "_info" if openmetrics else family)
            else:
                names.add(family)
            continue
        match = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)", line)
        if match:
            names.add(match.group(1))
    for name in list(names):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                names.add(name[: -len(suffix)])
    return names


def substitute_grafana_variables(expr):
    expr = re.sub(r"\$\{?__(rate_interval|interval|range)(?::[a-z]+)?\}?", "5m", expr)
    expr = re.sub(r"\$__(interval_ms|range_ms|range_s)", "300", expr)
    return re.sub(r"\$\{[^}]*\}|\$[A-Za-z_][A-Za-z0-9_]*|\[\[[A-Za-z0-9_:.]+\]\]", "x", expr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", action="append", default=[], metavar="FILE",
                        nargs="+", help="an exposition file scraped from a binary (repeatable)")
    parser.add_argument("--dashboard", action="append", metavar="FILE",
                        help="a dashboard JSON (default: ops/grafana/*.json)")
    parser.add_argument("--rules", action="append", metavar="FILE",
                        help="a rule file (default: ops/prometheus/alerts.yml)")
    parser.add_argument("--emit-rules", metavar="FILE",
                        help="write the dashboards' expressions as recording rules to FILE")
    parser.add_argument("--verbose", action="store_true",
                        help="print where each name is used")
    args = parser.parse_args()

    dashboards = args.dashboard or DEFAULT_DASHBOARDS
    rules = args.rules or DEFAULT_RULES
    if not dashboards:
        parser.error("no dashboard found under ops/grafana")
    exprs = []
    try:
        for path in dashboards:
            exprs.extend(("dashboard", where, expr) for where, expr in dashboard_exprs(path))
        for path in rules:
            exprs.extend(("rules", where, expr) for where, expr in rule_exprs(path))
    except (OSError, ValueError) as error:
        print(f"check_metric_names: {error}", file=sys.stderr)
        return 2

    used = {}
    try:
        for _, where, expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(where)
    except PromQLError as error:
        print(f"check_metric_names: {error}", file=sys.stderr)
        return 2

    if args.emit_rules:
        lines = ["# Generated by ops/check_metric_names.py --emit-rules: the dashboards'",
                 "# expressions, for `promtool check rules`.", "groups:",
                 "  - name: dashboard-expressions", "    rules:"]
        for n, (source, where, expr) in enumerate(e for e in exprs if e[0] == "dashboard"):
            lines.append(f"      - record: stile_dashboard:expr_{n}")
            lines.append(f"        expr: {json.dumps(substitute_grafana_variables(expr))}")
            lines.append(f"        labels: {{panel: {json.dumps(where)}}}")
        Path(args.emit_rules).write_text("\n".join(lines) + "\n", encoding="utf-8")

    files = [f for group in args.metrics for f in group]
    if not files:
        if not args.emit_rules:
            for name in sorted(used):
                print(f"{name}\t{', '.join(sorted(used[name]))}" if args.verbose else name)
        return 0

    exported = set()
    for path in files:
        try:
            exported |= exported_names(path)
        except OSError as error:
            print(f"check_metric_names: {error}", file=sys.stderr)
            return 2
    missing = sorted(name for name in used if name not in exported and name not in ALWAYS_ALLOWED)
    if missing:
        print(f"metric names referenced but not exported by {', '.join(files)}:", file=sys.stderr)
        for name in missing:
            print(f"  {name}  (used in {'; '.join(sorted(used[name]))})", file=sys.stderr)
        return 1
    print(f"all {len(used)} referenced metric names are exported")
    return 0


if __name__ == "__main__":
    sys.exit(main())

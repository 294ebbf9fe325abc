"""The Markdown report: a header about the machine, a table of the steps, then per step its
command, its result, the tables and highlighted lines of its log, and on failure the log's tail."""

from __future__ import annotations

import datetime
import os
import re

from gpucheck.run import Outcome
from gpucheck.steps import Step
from gpucheck.targets import evaluate

TAIL_LINES = 25


def quoted(step: Step, text: str) -> list[str]:
    """The log lines the report shows: its Markdown tables as tables, and the lines the step
    highlights in code blocks (kept as printed, fixed-width tables included). The command line
    the log starts with is shown apart."""
    pattern, runs = re.compile(step.highlight), []  # runs of (is a table, lines)
    for line in text.splitlines():
        if line.startswith("$ "):
            continue
        table = line.startswith("|")
        if table or pattern.search(line):
            if not runs or runs[-1][0] != table:
                runs.append((table, []))
            runs[-1][1].append(line)
        elif runs and runs[-1][0]:
            runs.append((False, []))  # a table ends where its log goes on
    lines = []
    for table, block in filter(lambda run: run[1], runs):
        lines += [*block, ""] if table else ["```", *block, "```", ""]
    return lines


def section(index: int, outcome: Outcome) -> list[str]:
    step = outcome.step
    lines = [f"## {index}. {step.name}: {step.title}", "", f"`{step.shell()}`", "",
             f"**{outcome.status}**" + (f" ({outcome.note})" if outcome.note else "")
             + f", {outcome.seconds:.1f} s of {outcome.limit_s:.0f} s", ""]  # fmt: skip
    text = outcome.log.read_text(errors="replace") if outcome.log else ""
    lines += quoted(step, text)
    if not outcome.ok and outcome.status != "skipped":
        tail = text.splitlines()[-TAIL_LINES:]
        lines += ["", f"Last {len(tail)} lines of `{outcome.log.name}`:", "", "```", *tail, "```"]
    return lines + [""]


def render(outcomes: list[Outcome], header: list[str], dry: bool, budget_s: float) -> str:
    mode = "dry run, nothing executed" if dry else "run on the GPU"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    total = sum(o.seconds for o in outcomes)
    lines = [f"# gpu-check, {now}", "", f"Mode: {mode}.", "", *header,
             f"- load average {os.getloadavg()[0]:.2f} at the end; steps took {total:.0f} s "
             f"of a {budget_s:.0f} s budget", "", "| # | step | result | seconds | limit s | log |",
             "|---:|---|---|---:|---:|---|"]  # fmt: skip
    for i, o in enumerate(outcomes, 1):
        log = o.log.name if o.log else ""
        lines.append(f"| {i} | {o.step.name} | {o.status} | {o.seconds:.1f} | "
                     f"{o.limit_s:.0f} | {log} |")  # fmt: skip
    lines += ["", "## Targets", ""]
    if dry:
        lines.append("Not measured (dry run).")
    else:
        lines += evaluate({o.step.name: o.log for o in outcomes})
    lines.append("")
    for i, o in enumerate(outcomes, 1):
        lines += section(i, o)
    return "\n".join(lines)

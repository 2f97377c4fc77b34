"""Reading what the steps printed: the last error of a command and whether it is a
CUDA-availability one (classify_failure, judge_cuda_stop for a rehearsal), pytest's junit XML
and -v output (one row per test, and their table), compute-sanitizer's output."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from .config import ROOT
from .runner import Run, _table

CUDA_UNAVAILABLE = re.compile(
    "|".join(
        [
            r"Torch not compiled with CUDA enabled",
            r"No CUDA GPUs are available",
            r"Found no NVIDIA driver",
            r"no CUDA-capable device is detected",
            r"CUDA driver initialization failed",
            r"CUDA driver version is insufficient",
            r"cudaErrorNoDevice|cudaErrorInsufficientDriver",
            r"CUDA is not available",
            r"no CUDA GPU is visible",  # ebjdat-bench --device cuda
        ]
    ),
    re.IGNORECASE,
)
# Errors that mean the code itself is wrong, whatever their message says.
CODE_ERRORS = {
    "NameError",
    "ImportError",
    "ModuleNotFoundError",
    "TypeError",
    "AttributeError",
    "SyntaxError",
    "IndentationError",
    "UnboundLocalError",
}
_EXC_LINE = re.compile(
    r"^(?P<type>(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt|Failure))"
    r"(?::\s*(?P<msg>.*))?$"
)
_CLI_ERROR = re.compile(r"^(?P<prog>[\w.\-]+(?: [\w.\-]+)*): error: (?P<msg>.*)$")


def final_error(lines: Sequence[str]) -> tuple[str | None, str]:
    """(exception type or "usage", line) of the last error a Python program printed: the last
    line of a traceback, or a command-line tool's `prog: error: ...`; (None, "") if none."""
    for line in reversed(lines):
        text = line.strip()
        match = _EXC_LINE.match(text)
        if match:
            return match["type"].rsplit(".", 1)[-1], text
        match = _CLI_ERROR.match(text)
        if match:
            return "usage", text
    return None, ""


def classify_failure(lines: Sequence[str]) -> tuple[str, str]:
    """("cuda-unavailable", line) when the output ends with a CUDA-availability error (torch's,
    or ebjdat-bench's own), ("error", line) for any other error, ("none", last line) without
    one."""
    kind, line = final_error(lines)
    if kind is not None:
        if kind not in CODE_ERRORS and CUDA_UNAVAILABLE.search(line):
            return "cuda-unavailable", line
        return "error", line
    hits = [x.strip() for x in lines if CUDA_UNAVAILABLE.search(x)]
    if hits:
        return "cuda-unavailable", hits[-1]
    rest = [x.strip() for x in lines if x.strip()]
    return "none", rest[-1] if rest else ""


def judge_cuda_stop(run: Run) -> tuple[bool, str]:
    """Rehearsal verdict on a CUDA command run without a GPU: it must get to its first CUDA call
    and stop there with a CUDA-availability error, and with nothing else."""
    if run.rc is None:
        return False, run.tail[-1] if run.tail else "could not start"
    if run.timed_out:
        return False, "timed out before reaching a CUDA call"
    if run.rc == 0:
        return False, "ran to the end without a GPU; it should stop at its first CUDA call"
    kind, line = classify_failure(run.tail)
    if kind == "cuda-unavailable":
        return True, f"reached the first CUDA call: {line[:150]}"
    return False, f"exit {run.rc} before any CUDA call: {line[:300] or '(no message)'}"


def _test_name(classname: str, name: str, root: Path = ROOT) -> str:
    """pytest's junit classname ("tests.test_cuda" or "tests.test_x.TestY") and name, as a node
    id to paste into `pytest` ("tests/test_cuda.py::name")."""
    if not classname:  # a module skipped as a whole: "tests.test_x"
        classname, name = name, ""
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        path = "/".join(parts[:cut]) + ".py"
        if (root / path).is_file():
            return "::".join([path, *parts[cut:], *([name] if name else [])])
    return f"{classname}::{name}" if name else classname


def _first_lines(text: str | None, n: int = 5) -> list[str]:
    lines = [x.rstrip() for x in (text or "").splitlines() if x.strip()]
    return lines[:n]


def _collection_skip_reason(text: str) -> str:
    """A module skipped at collection: pytest writes "('path', line, 'Skipped: reason')"."""
    try:
        value = ast.literal_eval(" ".join(text.splitlines()))
    except (ValueError, SyntaxError):
        value = text
    if isinstance(value, tuple) and value:
        value = str(value[-1])
    return re.sub(r"^\S+:\d+: ", "", str(value)).removeprefix("Skipped: ")


def parse_junit(path: Path, root: Path = ROOT) -> dict:
    """Counts and one row per testcase of a pytest junit XML: name, outcome (passed, failed,
    error, skipped), seconds; `message` (first 5 lines) and `where` (the failing line) for
    failures and errors, `reason` for skips."""
    tree = ET.parse(path).getroot()
    suites = [tree] if tree.tag == "testsuite" else tree.findall("testsuite")
    cases = []
    for suite in suites:
        for case in suite.iter("testcase"):
            row: dict = {
                "name": _test_name(case.get("classname", ""), case.get("name", ""), root),
                "outcome": "passed",
                "seconds": float(case.get("time") or 0.0),
            }
            for tag, outcome in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
                child = case.find(tag)
                if child is None:
                    continue
                row["outcome"] = outcome
                message, text = child.get("message"), child.text or ""
                if outcome == "skipped":
                    reason = message or text.strip()
                    if message == "collection skipped" and text.strip():
                        reason = _collection_skip_reason(text.strip())
                    if child.get("type") == "pytest.xfail":
                        reason = "xfail: " + reason
                    row["reason"] = reason
                else:
                    e_lines = [x[1:].strip() for x in text.splitlines() if x.startswith("E ")]
                    lines = _first_lines(message, 5) + e_lines
                    row["message"] = list(dict.fromkeys(lines))[:5] or _first_lines(text)
                    where = [x for x in text.splitlines() if re.match(r"^\S+:\d+: ", x)]
                    if where:
                        row["where"] = where[-1].strip()
                break
            cases.append(row)
    counts = {
        k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")
    }
    return {"tests": len(cases), **counts, "cases": cases}


_VERBOSE_LINE = re.compile(
    r"^(?P<name>\S+::\S+) (?P<outcome>PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b"
)


def parse_verbose(text: str) -> dict:
    """The per-test rows that `pytest -v` printed, for a run cut off before its junit XML."""
    outcomes = {
        "PASSED": "passed",
        "XPASS": "passed",
        "FAILED": "failed",
        "ERROR": "error",
        "SKIPPED": "skipped",
        "XFAIL": "skipped",
    }
    cases = [
        {"name": m["name"], "outcome": outcomes[m["outcome"]], "seconds": None}
        for m in map(_VERBOSE_LINE.match, text.splitlines())
        if m
    ]
    counts = {
        k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")
    }
    return {"tests": len(cases), **counts, "cases": cases, "from": "pytest -v output"}


def print_tests(parsed: dict) -> None:
    rows = []
    for case in parsed["cases"]:
        outcome = case["outcome"]
        seconds = "" if case.get("seconds") is None else f"{case['seconds']:.2f}"
        note = case.get("reason", "")
        rows.append(
            [
                outcome.upper() if outcome in ("failed", "error") else outcome,
                seconds,
                case["name"] + (f"  ({note})" if note else ""),
            ]
        )
    _table(["outcome", "seconds", "test"], rows)
    for case in parsed["cases"]:
        if case["outcome"] in ("failed", "error"):
            print(f"    -- {case['outcome']}: {case['name']}")
            for line in case.get("message", []):
                print(f"         {line}")
            if case.get("where"):
                print(f"         at {case['where']}")
    print(
        f"    {parsed['passed']} passed, {parsed['failed']} failed, {parsed['error']} errors, "
        f"{parsed['skipped']} skipped"
    )


_SUMMARY = re.compile(r"ERROR SUMMARY:\s*(\d+)\s+errors?")
_CALL = re.compile(r"^call (?P<name>.+): (?P<status>ok|NOT FINITE)$")


def parse_sanitizer(text: str) -> dict:
    """compute-sanitizer's `ERROR SUMMARY: N errors` (None when it never got there), how many of
    them are failed CUDA API calls ("Program hit cudaError... on CUDA API call", which torch
    itself may cause) rather than memory errors in a kernel, the first lines of its reports,
    and which of sanitizer_calls.py's calls finished."""
    summaries = _SUMMARY.findall(text)
    reports = [
        x.strip()
        for x in text.splitlines()
        if x.startswith("=========")
        and x.strip("= \n")
        and not _SUMMARY.search(x)
        and "COMPUTE-SANITIZER" not in x
    ]
    calls = [m.groupdict() for m in map(_CALL.match, text.splitlines()) if m]
    errors = int(summaries[-1]) if summaries else None
    api = sum(bool(re.match(r"=+ Program hit \w+", x)) for x in reports)
    return {
        "errors": errors,
        "api_errors": api,
        "memory_errors": None if errors is None else max(errors - api, 0),
        "first_reports": reports[:12],
        "calls": [c["name"] for c in calls if c["status"] == "ok"],
        "not_finite": [c["name"] for c in calls if c["status"] != "ok"],
        "all_calls_ok": bool(re.search(r"^all \d+ calls ok", text, re.MULTILINE)),
    }

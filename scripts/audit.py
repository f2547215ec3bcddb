"""The vulnerability audit of requirements/hub.lock, tolerant of a machine without network.

Runs pip-audit on the lock's exact pins (no resolution, nothing installed) and decides:
  - a known vulnerability in a pinned release: exit 1, naming the package, version, advisory
    and the fixed versions. The policy: CI fails; update the pin (scripts/lock --upgrade), or,
    when no fix exists yet and the hub is not exposed to the flaw, add the advisory's id with a
    reason and a date to requirements/audit-ignore.txt.
  - the vulnerability database cannot be reached (no network, or an index that answers for no
    package): prints "audit skipped: no network ..." and exits 0.
  - some packages could not be looked up: each is named, exit 0.
  - pip-audit itself failed in another way: exit 1 with its error.

    python scripts/audit.py [--lock requirements/hub.lock]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NETWORK_ERRORS = (
    "ConnectionError",
    "ProxyError",
    "NameResolutionError",
    "Max retries exceeded",
    "Temporary failure in name resolution",
    "timed out",
    "Network is unreachable",
)


def ignored_advisories(path: Path) -> list[str]:
    """The advisory ids in the ignore file: one a line, first word; '#' starts a comment."""
    if not path.exists():
        return []
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = line.split("#", 1)[0].split()
        if words:
            ids.append(words[0])
    return ids


def verdict(
    report: dict[str, Any] | None, returncode: int, stderr: str, *, require: bool = False
) -> tuple[int, list[str]]:
    """The exit status and the lines to print for one pip-audit run (its JSON report, if it
    wrote one). An audit that could look nothing up passes with "audit skipped" unless
    `require` (release builds: --require-database), when it fails."""
    skipped_status = 1 if require else 0
    if report is None:
        if any(marker in stderr for marker in NETWORK_ERRORS):
            last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
            return skipped_status, [
                f"audit skipped: no network (the vulnerability database: {last[:200]})"
            ]
        return 1, [f"audit failed: pip-audit exited {returncode}", stderr.strip()[-2000:]]
    deps = report.get("dependencies", [])
    vulnerable = [d for d in deps if d.get("vulns")]
    skipped = [d for d in deps if "skip_reason" in d]
    lines: list[str] = []
    for dep in vulnerable:
        for vuln in dep["vulns"]:
            fixes = ", ".join(vuln.get("fix_versions") or []) or "none yet"
            lines.append(
                f"VULNERABLE {dep['name']} {dep.get('version', '?')}: {vuln.get('id')} "
                f"(fixed in: {fixes})"
            )
    if vulnerable:
        lines.append(
            f"audit failed: {len(vulnerable)} pinned package(s) with known vulnerabilities; "
            "update the lock (scripts/lock --upgrade) or record an accepted advisory in "
            "requirements/audit-ignore.txt"
        )
        return 1, lines
    if deps and len(skipped) == len(deps):
        reasons = sorted({str(d["skip_reason"]) for d in skipped})
        return skipped_status, [
            f"audit skipped: the vulnerability database answered for none of the {len(deps)} "
            f"pinned packages ({'; '.join(reasons)[:300]})"
        ]
    lines += [f"audit: not looked up: {d['name']} ({d['skip_reason']})" for d in skipped]
    audited = len(deps) - len(skipped)
    lines.append(f"audit: {audited} pinned package(s), no known vulnerabilities")
    return 0, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock", type=Path, default=ROOT / "requirements" / "hub.lock")
    parser.add_argument(
        "--ignore-file", type=Path, default=ROOT / "requirements" / "audit-ignore.txt"
    )
    parser.add_argument(
        "--require-database",
        action="store_true",
        help="fail when the vulnerability database cannot be reached (release builds)",
    )
    args = parser.parse_args()
    pip_audit = Path(sys.executable).parent / "pip-audit"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "audit.json"
        command = [
            str(pip_audit),
            "-r",
            str(args.lock),
            "--disable-pip",
            "--require-hashes",
            "--progress-spinner",
            "off",
            "--timeout",
            "20",
            "-f",
            "json",
            "-o",
            str(out),
        ]
        for advisory in ignored_advisories(args.ignore_file):
            command += ["--ignore-vuln", advisory]
        result = subprocess.run(  # noqa: S603 - our own tool, our own arguments
            command, capture_output=True, text=True, timeout=600, check=False
        )
        report = json.loads(out.read_text()) if out.exists() and out.stat().st_size else None
    status, lines = verdict(report, result.returncode, result.stderr, require=args.require_database)
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())

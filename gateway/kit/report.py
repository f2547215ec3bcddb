"""What `rtm-gateway driver check` reports: one `Check` per aspect of a driver and the `Report`
that collects them, with its text and `--json` forms. Data only; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    problems: tuple[str, ...] = ()


@dataclass(slots=True)
class Report:
    driver_id: str
    source: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def as_dict(self) -> dict[str, object]:
        return {
            "driver": self.driver_id,
            "source": self.source,
            "ok": self.ok,
            "checks": [
                {"name": c.name, "ok": c.ok, "detail": c.detail, "problems": list(c.problems)}
                for c in self.checks
            ],
        }

    def render(self) -> str:
        lines = [f"driver check: {self.driver_id} ({self.source})"]
        for check in self.checks:
            lines.append(f"  {'pass' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
            lines += [f"          - {problem}" for problem in check.problems[:20]]
            if len(check.problems) > 20:
                lines.append(f"          ... and {len(check.problems) - 20} more")
        lines.append("result: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)

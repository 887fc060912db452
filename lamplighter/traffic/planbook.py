"""The plans in force: stored in the database, cached in memory, changed live by admins.

Reads come from memory on every request; a change through :meth:`PlanBook.put` writes the
database and the cache together, so the next request obeys it. (With several replicas the cache
is refreshed through Redis; see the scale-out docs.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lamplighter.exceptions import InvalidRequest, NotFound
from lamplighter.store.audit import Audit
from lamplighter.store.audit import write as write_audit
from lamplighter.store.database import Database
from lamplighter.store.models import PlanRow, utcnow
from lamplighter.store.plans import Plans
from lamplighter.traffic.plans import PLAN_FIELDS, Plan, plan_from


def _plan(row: PlanRow) -> Plan:
    values = {name: getattr(row, name) for name in PLAN_FIELDS if name != "name"}
    return plan_from(row.name, values)


def _row(plan: Plan) -> PlanRow:
    values = plan.as_dict()
    return PlanRow(**values, updated_at=utcnow())


class PlanBook:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._plans: dict[str, Plan] = {}

    async def load(self, configured: Mapping[str, Plan]) -> None:
        """Store configured plans the database lacks, then cache every stored plan."""
        async with self.db.transaction() as session:
            plans = Plans(session)
            stored = {row.name for row in await plans.all()}
            for name, plan in configured.items():
                if name not in stored:
                    await plans.put(_row(plan))
            self._plans = {row.name: _plan(row) for row in await plans.all()}

    def get(self, name: str) -> Plan:
        plan = self._plans.get(name)
        if plan is None:
            # A user on a plan that was never defined gets the most restrictive one.
            return min(self._plans.values(), key=lambda p: (-p.priority, p.requests_per_minute))
        return plan

    def names(self) -> list[str]:
        return list(self._plans)

    def all(self) -> list[Plan]:
        return sorted(self._plans.values(), key=lambda p: (p.priority, p.name))

    def require(self, name: str) -> Plan:
        if name not in self._plans:
            raise NotFound(f"no plan named {name!r}", param="plan", code="plan_not_found")
        return self._plans[name]

    async def put(
        self,
        name: str,
        changes: Mapping[str, Any],
        *,
        create: bool = False,
        audit: Audit | None = None,
    ) -> Plan:
        """Change (or with ``create``, add) a plan; it applies from the next request."""
        base = self._plans.get(name)
        if base is None and not create:
            raise NotFound(f"no plan named {name!r}", param="plan", code="plan_not_found")
        try:
            plan = plan_from(name, changes, base)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="plan") from exc
        async with self.db.transaction() as session:
            await Plans(session).put(_row(plan))
            await write_audit(session, audit)
        self._plans[name] = plan
        return plan

"""The plans in force: stored in the database, cached in memory, changed live by admins.

Reads come from memory on every request; a change through :meth:`PlanBook.put` writes the
database and the cache together, so the next request obeys it. With several replicas the change
is announced on the bulletin (Redis pub/sub) and every other replica rereads its plans, so it
binds the next request wherever it lands; a slow timer rereads them too, in case a message was
lost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy.exc import IntegrityError

from lamplighter.exceptions import ConfigError, InvalidRequest, NotFound
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


async def _alone(_: str) -> None:
    """One replica has no one to tell."""


class PlanBook:
    def __init__(self, db: Database, announce: Callable[[str], Awaitable[None]] = _alone) -> None:
        """``announce`` tells the other replicas that a plan changed (see bulletin.py)."""
        self.db = db
        self.announce = announce
        self._plans: dict[str, Plan] = {}

    async def refresh(self) -> None:
        """Reread every plan from the database: another replica (or an admin there) changed
        one. Plans are few; rereading all of them is simpler than rereading one."""
        async with self.db.transaction() as session:
            rows = await Plans(session).all()
        self._plans = {row.name: _plan(row) for row in rows}

    async def load(self, configured: Mapping[str, Plan]) -> None:
        """Store configured plans the database lacks, then cache every stored plan. Replicas
        starting together on a new database race to store them: the loser tries once more,
        and then finds them stored."""
        try:
            await self._store_missing(configured)
        except IntegrityError:
            await self._store_missing(configured)
        await self.refresh()

    async def _store_missing(self, configured: Mapping[str, Plan]) -> None:
        async with self.db.transaction() as session:
            plans = Plans(session)
            stored = {row.name for row in await plans.all()}
            for name, plan in configured.items():
                if name not in stored:
                    await plans.put(_row(plan))

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

    def check_setting(self, setting: str, name: str) -> None:
        """A setting that names a plan must name one there is (a typo would otherwise surface
        only when a person signs up, or is put on it)."""
        if name not in self._plans:
            known = ", ".join(sorted(self._plans))
            raise ConfigError(f"setting {setting!r}: no plan named {name!r}; known plans: {known}")

    def require(self, name: str) -> Plan:
        """The plan named ``name``; one that does not exist is refused with the known ones
        (as ``lamplighter users create`` does), so an operator's typo shows its fix."""
        if name not in self._plans:
            known = ", ".join(sorted(self._plans))
            raise NotFound(
                f"no plan named {name!r}; known plans: {known}",
                param="plan",
                code="plan_not_found",
            )
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
        await self.announce(name)
        return plan

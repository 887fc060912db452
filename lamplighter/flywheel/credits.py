"""Credits: useful feedback earns extra daily tokens, and only useful feedback does.

Each rating, regeneration verdict, correction or side-by-side vote is judged once, when it is
given (one ledger row per signal, so rating the same answer again never earns twice; the
corrections of one answer are one signal, so rewriting it again never earns twice either). It
earns ``tokens`` extra daily tokens for ``days`` days unless a quality check fails:

- ``too_fast``: given within ``min_seconds`` of the answer appearing (nobody read it);
- ``no_training_consent``: the person's chats are not to be trained on (their own choice, or
  the organisation's default when they made none), so the feedback is of no use;
- ``flagged_for_abuse``: the account has a high violation score or an open abuse report;
- ``same_on_everything``: the rater's last ``uniform_after`` ratings (or votes) are all alike;
- ``low_trust``: the rater's trust (below) is under ``min_trust``.

A credit stands only while its feedback does: removing a rating claws its credit back
(``rating_removed``; the ledger row stays, so rating that answer again earns nothing), and the
credits of a person who withdraws consent count for nothing until they give it again (as
exports leave out their data until then).

:meth:`Credits.review` (every few minutes in the server, and ``lamplighter credits review``)
estimates every rater's trust and claws back credits granted to raters who have since turned out
untrustworthy, uniform or abusive. Trust is a one-coin Dawid-Skene estimate (``trust.py``) over
the signals that can be checked against other people: ratings of answers several people were
shown (the same question and the same answer, as the response cache serves them) and
side-by-side votes, each judged against the other voters' votes on the same pair of models (one
label per vote, so a voter who votes against everyone again and again loses trust with every
vote). Accounts that rate from one network and agree
almost always are merged into one rater first, so sock puppets cannot vouch for each other.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import combinations

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from lamplighter.flywheel.feedback import consents
from lamplighter.flywheel.policy import CreditPolicy
from lamplighter.flywheel.trust import PRIOR_TRUST, Label, Trust, estimate
from lamplighter.store.database import Database
from lamplighter.store.models import AbuseReport, Comparison, Credit, Message, Rating, User, utcnow

log = logging.getLogger(__name__)

# How long a person's credit total is trusted from memory before it is read again.
BONUS_TTL_S = 30.0
# Accounts on one network whose labels agree this often (on at least PUPPET_MIN_SHARED shared
# items) are treated as one rater. Colleagues behind one NAT agree far less often than that.
PUPPET_AGREEMENT = 0.95
PUPPET_MIN_SHARED = 5


def origin_of(address: str) -> str | None:
    """A short hash of the network an address is in (/24 for IPv4, /48 for IPv6): enough to
    tell that two accounts rate from one place, without storing where that is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    prefix = 24 if ip.version == 4 else 48
    network = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    return hashlib.sha256(f"lamplighter-origin:{network}".encode()).hexdigest()[:32]


@dataclass
class ReviewReport:
    raters: int = 0
    checked: int = 0  # raters with enough evidence to judge
    untrusted: list[uuid.UUID] = field(default_factory=list)
    clawed_back: Counter[str] = field(default_factory=Counter)  # reason -> credits
    groups: int = 0  # sock-puppet groups found


class Credits:
    def __init__(
        self,
        db: Database,
        policy: CreditPolicy,
        flagged: Callable[[uuid.UUID], bool] = lambda _: False,
        consent_default: bool = False,
    ) -> None:
        """``flagged`` says whether the abuse scores count a user as abusive right now;
        ``consent_default``, whether people who did not choose consent to training."""
        self.db = db
        self.policy = policy
        self.flagged = flagged
        self.consent_default = consent_default
        self.trust: Trust | None = None  # from the last review
        self._bonus: dict[uuid.UUID, tuple[float, int]] = {}

    async def judge(
        self,
        session: AsyncSession,
        user_id: uuid.UUID,
        signal: str,
        subject_id: uuid.UUID,
        answered_at: datetime,
        now: datetime,
    ) -> Credit:
        """Grant or refuse the credit for one signal, in the signal's own transaction; a signal
        judged before keeps its first judgement."""
        found = await session.scalar(
            select(Credit).where(Credit.signal == signal, Credit.subject_id == subject_id)
        )
        if found is not None:
            return found
        reason = await self._refusal(session, user_id, signal, answered_at, now)
        credit = Credit(
            user_id=user_id,
            signal=signal,
            subject_id=subject_id,
            tokens=self.policy.tokens if reason is None else 0,
            status="granted" if reason is None else "refused",
            reason=reason,
            created_at=now,
            expires_at=now + timedelta(days=self.policy.days),
            changed_at=now,
        )
        session.add(credit)
        await session.flush()
        self._bonus.pop(user_id, None)
        return credit

    async def _refusal(
        self,
        session: AsyncSession,
        user_id: uuid.UUID,
        signal: str,
        answered_at: datetime,
        now: datetime,
    ) -> str | None:
        if (now - answered_at).total_seconds() < self.policy.min_seconds:
            return "too_fast"
        if not await self._consents(session, user_id):
            return "no_training_consent"
        if await self._abusive(session, user_id):
            return "flagged_for_abuse"
        if await self._uniform(session, user_id, signal):
            return "same_on_everything"
        if self._untrusted(user_id):
            return "low_trust"
        return None

    async def take_back(
        self,
        session: AsyncSession,
        signal: str,
        subject_id: uuid.UUID,
        reason: str,
        now: datetime,
    ) -> None:
        """Claw back the credit a signal earned, in the transaction that withdraws it (a rating
        removed). Its ledger row stays: giving the signal again earns nothing."""
        credit = await session.scalar(
            select(Credit).where(
                Credit.signal == signal,
                Credit.subject_id == subject_id,
                Credit.status == "granted",
            )
        )
        if credit is None:
            return
        credit.status, credit.reason, credit.changed_at = "clawed_back", reason, now
        self.forget(credit.user_id)

    def forget(self, user_id: uuid.UUID) -> None:
        """Read the person's bonus afresh next time (their credits or consent changed)."""
        self._bonus.pop(user_id, None)

    async def _consents(self, session: AsyncSession, user_id: uuid.UUID) -> bool:
        user = await session.get(User, user_id)
        return user is not None and consents(user.training_consent, self.consent_default)

    async def _abusive(self, session: AsyncSession, user_id: uuid.UUID) -> bool:
        if self.flagged(user_id):
            return True
        user = await session.get(User, user_id)
        if user is None or user.banned or user.disabled_at is not None:
            return True
        reports = await session.scalar(
            select(func.count())
            .select_from(AbuseReport)
            .where(AbuseReport.subject == f"user:{user_id}", AbuseReport.status == "open")
        )
        return bool(reports)

    async def _uniform(self, session: AsyncSession, user_id: uuid.UUID, signal: str) -> bool:
        """The rater's latest ratings (or votes) are all the same: rating without reading."""
        most = self.policy.uniform_after
        if most < 2:
            return False
        values: list[object]
        if signal == "rating":
            ratings = await session.scalars(
                select(Rating.rating)
                .where(Rating.user_id == user_id)
                .order_by(Rating.updated_at.desc())
                .limit(most)
            )
            values = list(ratings.all())
        else:
            winners = await session.scalars(
                select(Comparison.winner)
                .where(Comparison.user_id == user_id, Comparison.winner.is_not(None))
                .where(Comparison.kind != "correction")
                .order_by(Comparison.voted_at.desc())
                .limit(most)
            )
            values = list(winners.all())
        return len(values) >= most and len(set(values)) == 1

    def _untrusted(self, user_id: uuid.UUID) -> bool:
        trust = self.trust
        if trust is None:
            return False
        key = str(user_id)
        return (
            trust.evidence.get(key, 0) >= self.policy.min_evidence
            and trust.raters.get(key, PRIOR_TRUST) < self.policy.min_trust
        )

    async def bonus(self, user_id: uuid.UUID) -> int:
        """Extra daily tokens the person holds now: their live credits, up to the cap; none
        while they do not consent to training."""
        now = time.monotonic()
        cached = self._bonus.get(user_id)
        if cached is not None and now - cached[0] < BONUS_TTL_S:
            return cached[1]
        async with self.db.transaction() as session:
            total = (
                await session.scalar(
                    select(func.coalesce(func.sum(Credit.tokens), 0)).where(
                        Credit.user_id == user_id,
                        Credit.status == "granted",
                        Credit.expires_at > utcnow(),
                    )
                )
                if await self._consents(session, user_id)
                else 0
            )
        value = min(self.policy.cap, int(total or 0))
        if len(self._bonus) > 100_000:
            self._bonus.clear()
        self._bonus[user_id] = (now, value)
        return value

    async def summary(self, user_id: uuid.UUID) -> dict[str, object]:
        """What the person's feedback has earned, for their own page."""
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(Credit.status, Credit.reason, func.count())
                .where(Credit.user_id == user_id)
                .group_by(Credit.status, Credit.reason)
            )
            counts = [(status, reason, int(n)) for status, reason, n in rows]
        refused: Counter[str] = Counter()
        for status, reason, n in counts:
            if status == "refused" and reason:
                refused[reason] += n
        return {
            "bonus_daily_tokens": await self.bonus(user_id),
            "granted": sum(n for status, _, n in counts if status == "granted"),
            "clawed_back": sum(n for status, _, n in counts if status == "clawed_back"),
            "refused": dict(refused),
            "tokens_per_feedback": self.policy.tokens,
            "days": self.policy.days,
            "cap": self.policy.cap,
        }

    async def labels(self) -> tuple[list[Label], dict[str, str]]:
        """Every checkable label, and a group for each rater (sock puppets share one)."""
        labels: list[Label] = []
        origins: defaultdict[str, Counter[str]] = defaultdict(Counter)
        question = aliased(Message)
        async with self.db.transaction() as session:
            ratings = await session.stream(
                select(
                    Rating.user_id, Rating.origin, Rating.rating, question.content, Message.content
                )
                .join(Message, Message.id == Rating.message_id)
                .join(question, question.id == Message.parent_id)
                .where(Message.author.is_(None))
                .execution_options(yield_per=5000)
            )
            async for user_id, origin, rating, asked, answered in ratings:
                item = hashlib.sha256(f"{asked}\x00{answered}".encode()).hexdigest()[:32]
                labels.append(Label(str(user_id), f"answer:{item}", int(rating == 1)))
                if origin:
                    origins[str(user_id)][origin] += 1
            votes = await session.stream(
                select(
                    Comparison.id,
                    Comparison.user_id,
                    Comparison.origin,
                    Comparison.a_variant,
                    Comparison.b_variant,
                    Comparison.winner,
                ).where(
                    Comparison.kind == "side_by_side",
                    Comparison.winner.in_(("a", "b")),
                    Comparison.discarded.is_(None),
                )
            )
            async for comparison_id, user_id, origin, a, b, winner in votes:
                if a == b:
                    continue
                first, second = sorted((a, b))
                won = a if winner == "a" else b
                pair = f"pair:{first}|{second}"
                vote = Label(str(user_id), f"vote:{comparison_id}", int(won == first), pair)
                labels.append(vote)
                if origin:
                    origins[str(user_id)][origin] += 1
        return labels, puppet_groups(labels, origins)

    async def estimate(self) -> tuple[Trust, dict[str, str]]:
        """Every rater's trust as the store stands, with the sock-puppet groups found."""
        labels, groups = await self.labels()
        return estimate(labels, groups=groups), groups

    async def review(self) -> ReviewReport:
        """Estimate every rater's trust afresh and claw back what should not have been granted."""
        trust, groups = await self.estimate()
        self.trust = trust
        sizes = Counter(groups.values())
        report = ReviewReport(raters=len(trust.raters), groups=sum(n > 1 for n in sizes.values()))
        now = utcnow()
        async with self.db.transaction() as session:
            holders = await session.scalars(
                select(Credit.user_id)
                .where(Credit.status == "granted", Credit.expires_at > now)
                .distinct()
            )
            for user_id in list(holders.all()):
                reason = None
                if self._untrusted(user_id):
                    reason = "low_trust"
                    report.untrusted.append(user_id)
                elif await self._abusive(session, user_id):
                    reason = "flagged_for_abuse"
                elif await self._uniform(session, user_id, "rating") or await self._uniform(
                    session, user_id, "comparison"
                ):
                    reason = "same_on_everything"
                if reason is None:
                    continue
                taken = await session.execute(
                    update(Credit)
                    .where(Credit.user_id == user_id, Credit.status == "granted")
                    .values(status="clawed_back", reason=reason, changed_at=now)
                )
                report.clawed_back[reason] += taken.rowcount  # type: ignore[attr-defined]
                self._bonus.pop(user_id, None)
        report.checked = sum(1 for n in trust.evidence.values() if n >= self.policy.min_evidence)
        if report.clawed_back:
            log.warning(
                "credits clawed back",
                extra={"reasons": dict(report.clawed_back), "raters": len(report.untrusted)},
            )
        return report


def puppet_groups(labels: list[Label], origins: dict[str, Counter[str]]) -> dict[str, str]:
    """Accounts from one network that agree on nearly every item both labelled, merged into one
    group (named after one of them); every other rater is a group of their own."""
    home = {rater: counts.most_common(1)[0][0] for rater, counts in origins.items()}
    by_item: defaultdict[str, dict[str, int]] = defaultdict(dict)
    for label in labels:  # votes compared per pair of models, each voter's last vote on it
        by_item[label.pool or label.item][label.rater] = label.value
    everyone = {label.rater for label in labels}
    agree: Counter[tuple[str, str]] = Counter()
    shared: Counter[tuple[str, str]] = Counter()
    for raters in by_item.values():
        if len(raters) < 2:
            continue
        for first, second in combinations(sorted(raters), 2):
            if home.get(first) is None or home.get(first) != home.get(second):
                continue
            shared[first, second] += 1
            agree[first, second] += raters[first] == raters[second]
    parent: dict[str, str] = {}

    def root(rater: str) -> str:
        while parent.get(rater, rater) != rater:
            rater = parent[rater]
        return rater

    for pair, n in shared.items():
        if n >= PUPPET_MIN_SHARED and agree[pair] / n >= PUPPET_AGREEMENT:
            low, high = sorted((root(pair[0]), root(pair[1])))
            if low != high:
                parent[high] = low
    return {rater: root(rater) for rater in everyone}

"""Assembly: ``create_app(settings)`` builds the ASGI app; its lifespan lays the
:class:`Groundwork` (the database migrated and opened, the config file's tables checked, the plans
loaded) unless ``serve`` has laid it already, loads the backends and holds them in typed state.
Nothing connects at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from lamplighter.abuse.reports import ReviewQueue
from lamplighter.abuse.violations import Violations
from lamplighter.abuse.watch import Watch
from lamplighter.accounts import AccountService, Bootstrap
from lamplighter.api import admin, errors, feedback, guard, health, openai, openai_responses, stored
from lamplighter.api import billing as billing_api
from lamplighter.api import config as config_api
from lamplighter.api.middleware import RateLimitHeaders, RequestIds, RequestLimits, SecurityHeaders
from lamplighter.api.state import Services
from lamplighter.billing.service import Billing
from lamplighter.billing.stripe import StripeClient
from lamplighter.chat import ChatService
from lamplighter.drain import Drain, DrainGate, DrainMetrics
from lamplighter.engines.base import Backend
from lamplighter.engines.embedded import EmbeddedBackend, bundled_model_path
from lamplighter.engines.router import Router
from lamplighter.engines.upstream import UpstreamBackend, upstreams_from_config
from lamplighter.flywheel.credits import Credits
from lamplighter.flywheel.feedback import Feedback
from lamplighter.flywheel.preferences import Preferences
from lamplighter.readonly import ReadOnly
from lamplighter.reload import Reloader, ReloadMetrics, Tables, read_tables
from lamplighter.settings import Settings, read_config
from lamplighter.store import migrate
from lamplighter.store.database import Database, masked
from lamplighter.telemetry.metrics import Metrics
from lamplighter.telemetry.series import Series
from lamplighter.telemetry.tracing import TraceRequests, Tracing
from lamplighter.traffic.admission import Admission
from lamplighter.traffic.bulletin import Bulletin
from lamplighter.traffic.cache import ResponseCache
from lamplighter.traffic.clock import SystemClock
from lamplighter.traffic.gate import SlotGate
from lamplighter.traffic.planbook import PlanBook
from lamplighter.traffic.plans import plans_from_config
from lamplighter.traffic.ratelimits import RateLimiter
from lamplighter.traffic.state import MemoryState
from lamplighter.web import api as web_api
from lamplighter.web import pages
from lamplighter.web import settings as settings_pages
from lamplighter.web.auth import WebAuth

if TYPE_CHECKING:
    from lamplighter.traffic.redis_state import RedisState

log = logging.getLogger(__name__)
# How often rater trust is estimated afresh and undeserved credits are clawed back.
CREDITS_REVIEW_S = 600.0
# How often replicas reread the plans from the database, besides hearing of changes at once.
PLANS_RESYNC_S = 30.0
# How often subscriptions' period ends and grace expiries are applied (idempotent, per replica).
BILLING_SWEEP_S = 60.0


def announce_bootstrap(settings: Settings, created: Bootstrap) -> None:
    """Tell the operator, once, how to log in and how to get an API key."""
    base = settings.base_url
    # The CLI must find the same database the server uses.
    where = f"LAMPLIGHTER_DATA_DIR={settings.data_dir} "
    if settings.config:
        where += f"LAMPLIGHTER_CONFIG={settings.config} "
    if settings.database_url:
        # Masked: this goes to the logs, which are no place for the database's password.
        where += f"LAMPLIGHTER_DATABASE_URL='{masked(settings.database_url)}' "
    print(
        "\n"
        "  Lamplighter created its first account, an admin:\n"
        f"    email:    {created.email}\n"
        f"    password: {created.password}   (shown only now)\n"
        f"  Log in to the web chat at {base}/\n"
        "  Get an API key for it with:\n"
        f"    {where}{cli_command()} keys create {created.email}\n"
        "  then point the OpenAI SDK at it:\n"
        f"    OpenAI(base_url='{base}/v1', api_key='ll-...')\n",
        flush=True,
    )


def cli_command() -> str:
    """How the operator runs the `lamplighter` command that started this server: by its name
    where that is the one on PATH (a container's), else by the path it was started with
    (`.venv/bin/lamplighter` from `make run`), else through this Python."""
    started = Path(sys.argv[0])
    if started.name != "lamplighter":
        return f"{sys.executable} -m lamplighter"
    if started.parent == Path("."):  # run by its name alone, from PATH
        return "lamplighter"
    found = shutil.which("lamplighter")
    return "lamplighter" if found and Path(found).resolve() == started.resolve() else str(started)


async def default_backends(settings: Settings) -> list[Backend]:
    """The embedded engine (unless disabled) and the ``[[backends]]`` of the config file."""
    backends: list[Backend] = [
        UpstreamBackend(config)
        for config in upstreams_from_config(read_config(settings.config).get("backends", []))
    ]
    if settings.embedded_engine:
        embedded = EmbeddedBackend(
            settings.model_path or bundled_model_path(),
            settings.model_name,
            n_ctx=settings.n_ctx,
            n_threads=settings.threads,
            repack_weights=settings.repack_weights,
        )
        await embedded.load()
        backends.insert(0, embedded)
    return backends


def in_effect(settings: Settings, backends: int) -> dict[str, Any]:
    """What an operator confirms first when a server seems to run against the wrong thing:
    which database and Redis (their passwords masked), config file and data directory, and how
    many backends it loaded. Logged once at start."""
    return {
        "database": masked(settings.resolved_database_url),
        "redis": _without_password(settings.redis_url) if settings.redis_url else "none",
        "config": str(settings.config.resolve()) if settings.config else "none",
        "data_dir": str(settings.data_dir.resolve()),
        "backends": backends,
    }


def _without_password(url: str) -> str:
    """``url`` with its password as ***, split the way redis-py splits it (urllib: userinfo up
    to the last @), so that a password holding an unencoded @, which redis-py accepts, is hidden
    whole; SQLAlchemy's parser, behind ``masked``, stops at the first @ and shows the rest."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


@dataclass(frozen=True)
class Groundwork:
    """The first steps of the start, the ones an operator's mistake makes fail: the database
    migrated and opened, the config file read and its tables checked, the plans stored and
    loaded. ``serve`` lays it before anything else, so that a mistake is one ``error:`` line
    (see cli.py), and hands it to the app; an app given none lays its own in its lifespan."""

    db: Database
    config: dict[str, Any]
    tables: Tables
    plans: PlanBook


async def lay_groundwork(settings: Settings) -> Groundwork:
    """Read and check the config file, migrate the database, then store the file's plans the
    database lacks and load every plan. Raises ConfigError for a mistake in the file, or in a
    setting that names a plan; the database is closed again when anything fails."""
    config = read_config(settings.config)
    tables = read_tables(config)  # before the database: a mistake in the file is told first
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    url = settings.resolved_database_url
    # Alembic runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(migrate.upgrade, url)
    db = Database(url)
    try:
        plans = PlanBook(db)
        await plans.load(plans_from_config(config.get("plans", {})))
        plans.check_setting("signup_plan", settings.signup_plan)
        plans.check_setting("billing_free_plan", settings.billing_free_plan)
    except BaseException:
        await db.close()
        raise
    return Groundwork(db, config, tables, plans)


def _redis_state(settings: Settings) -> RedisState:
    """The limiters' state shared through Redis; redis is imported only then (one replica
    without Redis never loads it)."""
    from lamplighter.traffic.redis_state import RedisState

    return RedisState(
        settings.redis_url,
        failure="closed" if settings.redis_failure == "closed" else "open",
        replicas=settings.replicas,
        lease_ttl=settings.redis_lease_s,
    )


async def _resync_plans(plans: PlanBook) -> None:
    """Reread the plans now and then, in case a bulletin about a change was lost."""
    while True:
        await asyncio.sleep(PLANS_RESYNC_S)
        try:
            await plans.refresh()
        except Exception:
            log.exception("rereading the plans failed; trying again later")


async def _review_credits(credits: Credits) -> None:
    """Re-estimate rater trust and claw back undeserved credits every few minutes."""
    while True:
        await asyncio.sleep(CREDITS_REVIEW_S)
        try:
            await credits.review()
        except Exception:
            log.exception("credit review failed; trying again later")


async def _tend_answers(chat: ChatService, lease_s: float) -> None:
    """Among replicas sharing a store: every third of a lease, say which answers run here,
    and settle those a replica that died left behind (silent for two leases; see
    ``ChatService.recover``)."""
    while True:
        await asyncio.sleep(lease_s / 3)
        try:
            await chat.heartbeat()
            cut = await chat.recover(silent_for=2 * lease_s)
        except Exception:
            log.exception("tending the answers in progress failed; trying again later")
            continue
        if cut:
            log.warning("marked %d answers left by a replica that stopped as cut", cut)


async def _sample(metrics: Metrics, interval: float) -> None:
    """Close a point of the console's time series every ``interval`` seconds."""
    while True:
        await asyncio.sleep(interval)
        metrics.sample(time.time())


def create_app(
    settings: Settings,
    *,
    backends: Callable[[Settings], Awaitable[list[Backend]]] | None = None,
    on_bootstrap: Callable[[Settings, Bootstrap], None] = announce_bootstrap,
    groundwork: Groundwork | None = None,
) -> FastAPI:
    """The app. ``backends`` replaces the embedded engine (tests pass a scripted one).
    ``groundwork``, laid in the event loop the app will run in, spares its lifespan laying it
    again; the app owns it from then on (its lifespan closes the database), so it serves once."""
    tracing = Tracing(settings.otlp_endpoint)
    # The shutdown sequence: GracefulServer (drain.py) starts it on SIGTERM.
    drain = Drain(grace_s=settings.drain_grace, timeout_s=settings.shutdown_timeout)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ground = groundwork or await lay_groundwork(settings)
        db, config, tables, plans = ground.db, ground.config, ground.tables, ground.plans
        bulletin = Bulletin(settings.redis_url)

        async def announce(name: str) -> None:
            await bulletin.publish("plans", name=name)

        plans.announce = announce
        billing = Billing(
            db,
            plans,
            free_plan=settings.billing_free_plan,
            grace=timedelta(days=settings.billing_grace_days),
            stripe_client=StripeClient(settings.stripe_secret_key, settings.stripe_api_base)
            if settings.stripe_secret_key
            else None,
            webhook_secret=settings.stripe_webhook_secret,
        )
        degrade, flywheel = tables.degrade, tables.flywheel
        violations = Violations(tables.violations)
        credits = Credits(
            db,
            flywheel.credits,
            flagged=lambda user_id: (
                violations.score(f"user:{user_id}") >= violations.policy.threshold / 2
            ),
            consent_default=settings.training_consent_default,
        )
        router = Router(await (backends or default_backends)(settings))
        log.info("settings in effect", extra=in_effect(settings, len(router.backends)))
        for rule in degrade:
            if rule.model is not None:
                router.route(rule.model)  # a rule naming a model nobody serves fails at start
        await router.start()  # health checks: each upstream is checked once before serving
        clock = SystemClock()
        shared = _redis_state(settings) if settings.redis_url else None
        limiter = RateLimiter(shared or MemoryState(), clock)
        accounts = AccountService(db)
        metrics = Metrics(Series(interval=settings.stats_interval))
        if shared is not None:
            metrics.watch_redis(shared)
            await shared.start()
        bulletin.on("plans", lambda _: plans.refresh(), resync=plans.refresh)
        admission = Admission(
            clock,
            tables.headroom,
            gate=(
                SlotGate(
                    shared.client,
                    lease_ttl=settings.redis_lease_s,
                    announce=lambda pool: bulletin.envelope("slot", pool=pool),
                )
                if shared is not None
                else None
            ),
            replicas=settings.replicas,
        )

        async def slot_freed(message: dict[str, Any]) -> None:
            admission.wake(str(message.get("pool")))

        async def slots_freed_unheard() -> None:
            for pool in list(admission.pools):
                admission.wake(pool)

        bulletin.on("slot", slot_freed, resync=slots_freed_unheard)
        await bulletin.start()
        state = Services(
            settings=settings,
            db=db,
            router=router,
            accounts=accounts,
            plans=plans,
            limiter=limiter,
            chat=ChatService(
                db,
                router,
                plans,
                limiter,
                admission,
                cache=ResponseCache(shared=shared.client if shared is not None else None),
                degrade=degrade,
                metrics=metrics,
                tracer=tracing.tracer,
                moderation=tables.moderation,
                bonus=credits.bonus,
            ),
            web=WebAuth(db, accounts, settings.session_days),
            violations=violations,
            watch=Watch(tables.watch),
            reviews=ReviewQueue(db, accounts),
            feedback=Feedback(db, metrics, settings.training_consent_default, credits),
            credits=credits,
            preferences=Preferences(db, flywheel, credits, metrics),
            billing=billing,
            bulletin=bulletin,
            redis=shared,
        )

        async def cancel_here(message: dict[str, Any]) -> None:
            # A background response's cancel or a web chat's Stop, asked of another replica.
            with contextlib.suppress(ValueError, TypeError):
                state.chat.cancel(uuid.UUID(str(message.get("id"))))

        async def watch_here(message: dict[str, Any]) -> None:
            # A page reads an answer another replica writes, whose own page went away.
            with contextlib.suppress(ValueError, TypeError):
                state.chat.watch(uuid.UUID(str(message.get("id"))))

        bulletin.on("response.cancel", cancel_here)
        bulletin.on("answer.watch", watch_here)
        await guard.listen(state)  # bans in force, started and lifted on other replicas
        state.violations.on_ban = lambda ban: state.chat.metrics.bans.labels(
            ban.subject.split(":", 1)[0]
        ).inc()
        # Alone on its store, every answer in progress is one the last run left; replicas take
        # only those left by a replica that stopped (the rest run on live replicas).
        alone = settings.replicas == 1 and not settings.redis_url
        cut = await state.chat.recover(None if alone else 2 * settings.redis_lease_s)
        if cut:
            log.warning("marked %d answers interrupted by the last shutdown as cut", cut)
        created = await state.accounts.bootstrap_admin(settings.admin_email)
        if created is not None:
            on_bootstrap(settings, created)
        state.drain, drain.chat = drain, state.chat
        metrics.registry.register(DrainMetrics(drain))

        async def reloaded() -> None:
            await bulletin.publish("config")

        state.reloader = reloader = Reloader(settings, state, config, announce=reloaded)
        metrics.registry.register(ReloadMetrics(reloader))
        bulletin.on("config", reloader.heard)  # another replica reloaded: reread our file
        reloader.listen_for_sighup()
        app.state.services = state
        sampler = asyncio.create_task(_sample(state.chat.metrics, settings.stats_interval))
        reviewer = asyncio.create_task(_review_credits(state.credits))
        sweeper = asyncio.create_task(billing.sweep_forever(BILLING_SWEEP_S))
        resync = asyncio.create_task(_resync_plans(plans)) if settings.redis_url else None
        lease_s = settings.redis_lease_s
        tender = None if alone else asyncio.create_task(_tend_answers(state.chat, lease_s))
        try:
            yield
        finally:
            sampler.cancel()
            reviewer.cancel()
            sweeper.cancel()
            for task in (resync, tender):
                if task is not None:
                    task.cancel()
            await bulletin.stop()
            # Stop generating, let the cut answers and their usage be written, then close.
            await router.close()
            await state.chat.drain()
            await admission.close()
            if shared is not None:
                await shared.stop()  # after the drain, which settles and releases the slots
            await reloader.close()
            await state.chat.moderation.close()  # the one a reload put in, if any
            await billing.close()
            await db.close()
            await asyncio.to_thread(tracing.shutdown)  # flushes the spans not yet exported

    app = FastAPI(
        title="Lamplighter",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    errors.install(app)
    # While `lamplighter db copy` moves the store: writes get 503, running ones finish.
    app.add_middleware(
        ReadOnly, data_dir=settings.data_dir, database_url=settings.resolved_database_url
    )
    app.add_middleware(RequestLimits, max_bytes=settings.max_body_bytes)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RateLimitHeaders)
    app.add_middleware(TraceRequests, tracing=tracing)
    # Counts requests in flight; refuses new ones once a stopping server's grace is over.
    app.add_middleware(DrainGate, drain=drain)
    app.add_middleware(RequestIds)  # added last, so it runs first: ids cover everything
    app.state.drain = drain
    app.include_router(health.router)
    app.include_router(openai.router)
    app.include_router(openai_responses.router)
    app.include_router(stored.router)
    app.include_router(admin.router)
    app.include_router(config_api.router)
    app.include_router(billing_api.router)
    app.include_router(billing_api.admin_router)
    app.include_router(feedback.router)
    app.include_router(web_api.router)
    app.include_router(settings_pages.router)
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(packages=[("lamplighter.web", "static")]), name="static")
    return app

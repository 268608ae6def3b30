"""``sluicegate serve``: the process around the decision service.

Starts the HTTP server (and /metrics on its own port, and the gRPC server, when asked), then:

- reloads the config on SIGHUP and when its file changes (mtime, size and inode polled every
  ``reload_interval`` seconds; a directory by each of its YAML files). A config that does not
  load is rejected with one log line per problem and the previous one keeps serving. Requests
  in flight finish with the config they started with;
- on SIGTERM or SIGINT, drains: stops accepting, lets requests in flight finish (up to
  ``drain_timeout``), closes idle keep-alive connections, then exits 0.

Without a config it serves the built-in example (domain ``example``), and without a Redis URL
the in-memory store, and says so in the log. The event loop is uvloop when it is installed
(``pip install sluicegate[fast]``). With ``workers`` above 1, ``run`` hands over to
``workers.supervise``, which runs this same server in each worker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from .._errors import ConfigError, SluicegateError, StoreError, redact_url
from .._forwarded import TrustedProxies
from .._policy import Policy
from ..limiter import AsyncLimiter
from ..stores import open_async_store
from ._auth import AuthDescriptors
from ._http11 import HttpServer, Limits, Request, Response
from .config import RateLimitConfig, RateLimitConfigError, load, load_example
from .http import HttpApp, problem
from .service import RateLimitService, fallback_limiters
from .settings import Settings

__all__ = ["Server", "WorkerRole", "configure_logging", "run", "run_loop"]

log = logging.getLogger("sluicegate.serve")

_READY_POLICY: Final = Policy(1_000_000_000, 1.0, name="sluicegate-readyz")
_Stamp = tuple[tuple[str, int, int, int], ...]


# --- logging -------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback, if any), and
    which worker logged it when there are several."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.worker is not None:
            entry["worker"] = self.worker
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=True)


def configure_logging(log_format: str, level: str, *, worker: int | None = None) -> None:
    """Send sluicegate's logs to stderr, as text or JSON lines, each naming its ``worker``."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(worker))
    else:
        where = "" if worker is None else f" (worker {worker})"
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s %(name)s{where}: %(message)s"))
    root = logging.getLogger("sluicegate")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


# --- config files --------------------------------------------------------------------------------


def _stamp(path: str) -> _Stamp:
    """What changes when the config at ``path`` changes (empty when it cannot be read)."""
    root = Path(path)
    try:
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in (".yaml", ".yml")) if root.is_dir() else [root]
        found = []
        for file in files:
            info = file.stat()
            found.append((file.name, info.st_mtime_ns, info.st_size, info.st_ino))
        return tuple(found)
    except OSError:
        return ()


def _summary(config: RateLimitConfig) -> str:
    domains, rules = len(config.domains), len(config.rules)
    return (
        f"{domains} domain{'s' * (domains != 1)} ({', '.join(config.domains[:10])}), {rules} rule{'s' * (rules != 1)}"
    )


# --- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRole:
    """What a worker of ``sluicegate serve --workers N`` is told by its supervisor."""

    index: int
    supervisor_pid: int
    #: Called once the worker serves on every port.
    ready: Callable[[], None]


def exposition_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """What /metrics shows: ``registry``, or, when prometheus_client writes its values to files
    shared by several processes (``PROMETHEUS_MULTIPROC_DIR``, as the supervisor of
    ``--workers`` sets), every process's values added up."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return registry
    combined = CollectorRegistry()
    MultiProcessCollector(combined)  # type: ignore[no-untyped-call]
    return combined


class Server:
    """Everything ``sluicegate serve`` runs, started by ``start`` and stopped by ``stop``.
    ``reuse_port``: share the ports with the other workers of one supervisor."""

    def __init__(self, settings: Settings, *, registry: CollectorRegistry = REGISTRY, reuse_port: bool = False) -> None:
        self.settings = settings
        self.registry = registry
        self.reuse_port = reuse_port
        self.http: HttpServer | None = None
        self.metrics_http: HttpServer | None = None
        self.grpc: Any = None
        self.service: RateLimitService | None = None
        self._probe: AsyncLimiter | None = None
        self._stamp: _Stamp = ()
        self._reload_lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        settings = self.settings
        config = self._initial_config()
        url = settings.store_url
        if settings.redis_url is None:
            log.warning("no Redis URL given (SLUICEGATE_REDIS_URL or --redis): using memory://, per process")
        store = open_async_store(url, timeout=settings.timeout)
        limiter, limiters = fallback_limiters(
            store,
            default=settings.fallback,
            prefix=settings.prefix,
            timeout=settings.timeout,
            fallback_share=settings.fallback_share,
            registry=self.registry,
        )
        self._probe = AsyncLimiter(
            store, prefix=settings.prefix, timeout=settings.timeout, fallback="raise", registry=None
        )
        self.service = RateLimitService(
            config, limiter, shadow_mode=settings.shadow_mode, limiters=limiters, registry=self.registry
        )
        auth = AuthDescriptors(
            settings.auth_descriptors,
            trusted_proxies=TrustedProxies(settings.trusted_proxies),
            forwarded_header=settings.forwarded_header,
            ipv6_prefix=settings.ipv6_prefix,
        )
        app = HttpApp(
            self.service,
            registry=exposition_registry(self.registry),
            auth=auth,
            auth_domain=settings.auth_domain,
            auth_deny_status=settings.auth_deny_status,
            token=settings.token(),
            adhoc_policies=settings.adhoc_policies,
            ready=self.ready,
        )
        limits = Limits(
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            keepalive_timeout=settings.keepalive_timeout,
        )
        self._check_auth_domain(config)
        self.http = HttpServer(app, limits)
        await self._listen(self.http, settings.host, settings.port, "HTTP")
        if settings.metrics_port is not None:
            self.metrics_http = HttpServer(_metrics_only(app), limits)
            await self._listen(self.metrics_http, settings.metrics_host, settings.metrics_port, "metrics")
        if settings.grpc_port is not None:
            await self._start_grpc()
        log.info(
            "store %s (timeout %gs, fallback %s%s)",
            redact_url(url),
            settings.timeout,
            settings.fallback,
            ", shadow mode: nothing enforced" if settings.shadow_mode else "",
        )
        if settings.config is not None and settings.reload_interval > 0:
            self._watcher = asyncio.ensure_future(self._watch(settings.config, settings.reload_interval))

    def _initial_config(self) -> RateLimitConfig:
        path = self.settings.config
        if path is None:
            config = load_example()
            log.warning(
                "no config given (SLUICEGATE_CONFIG or --config): serving the built-in example config, %s",
                _summary(config),
            )
            return config
        self._stamp = _stamp(path)
        config = load(path)  # RateLimitConfigError: the caller reports it and exits 1
        log.info("config %s: %s", path, _summary(config))
        return config

    def _check_auth_domain(self, config: RateLimitConfig) -> None:
        """Say now, not on every /v1/auth call, when /v1/auth has no domain to decide in."""
        domain = self.settings.auth_domain
        if domain is None and len(config.domains) != 1:
            log.warning("/v1/auth answers 500: the config has several domains; set SLUICEGATE_AUTH_DOMAIN")
        elif domain is not None and domain not in config.domains:
            log.warning("/v1/auth answers 500: SLUICEGATE_AUTH_DOMAIN %r is not in the config", domain)

    async def _listen(self, server: HttpServer, host: str, port: int, what: str) -> None:
        try:
            await server.start(host, port, reuse_port=self.reuse_port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port} for {what}: {exc.strerror or exc}") from None
        address = server.address
        assert address is not None
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        log.info("serving %s on http://%s:%d", what, shown, address[1])

    async def _start_grpc(self) -> None:
        from . import grpc as transport  # grpcio only for a service that serves gRPC

        assert self.service is not None
        settings = self.settings
        if (settings.grpc_tls_cert is None) != (settings.grpc_tls_key is None):
            raise ConfigError("SLUICEGATE_GRPC_TLS_CERT and SLUICEGATE_GRPC_TLS_KEY go together")
        if settings.grpc_tls_client_ca is not None and settings.grpc_tls_cert is None:
            raise ConfigError("SLUICEGATE_GRPC_TLS_CLIENT_CA (mutual TLS) needs SLUICEGATE_GRPC_TLS_CERT and _KEY")
        tls = None
        if settings.grpc_tls_cert is not None and settings.grpc_tls_key is not None:
            tls = transport.TlsConfig(settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_tls_client_ca)
        self.grpc = await transport.start_grpc_server(
            self.service, host=settings.host, port=settings.grpc_port or 0, tls=tls, reuse_port=self.reuse_port
        )
        scheme = "plaintext" if tls is None else "mutual TLS" if tls.client_ca_file else "TLS"
        log.info("serving gRPC (%s) on %s:%s", scheme, settings.host, self.grpc.port)

    # --- readiness and reload ---------------------------------------------------------------------

    async def ready(self) -> bool:
        """A config is loaded, and the store answers or the default fallback is not ``raise``."""
        if self.service is None or self._probe is None:
            return False
        if self.settings.fallback != "raise":
            return True
        try:
            await self._probe.peek("readyz", _READY_POLICY)
        except StoreError:
            return False
        return True

    async def reload(self, reason: str) -> bool:
        """Load the config again; keep the old one if the new one does not load."""
        path = self.settings.config
        if path is None or self.service is None:
            log.info("%s: no config file to reload (serving the built-in example)", reason)
            return False
        async with self._reload_lock:
            self._stamp = _stamp(path)
            try:
                config = await asyncio.to_thread(load, path)
            except RateLimitConfigError as exc:
                for issue in exc.issues[:20]:
                    log.error("config rejected: %s", issue)
                log.error(
                    "config %s rejected (%s): %d problem%s; still serving the previous config",
                    path,
                    reason,
                    len(exc.issues),
                    "s" * (len(exc.issues) != 1),
                )
                return False
            self.service.config = config
            log.info("config reloaded (%s): %s", reason, _summary(config))
            self._check_auth_domain(config)
            return True

    async def _watch(self, path: str, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            if _stamp(path) != self._stamp:
                await self.reload("the file changed")

    # --- stopping ---------------------------------------------------------------------------------

    async def stop(self) -> bool:
        """Drain and close everything; True when every request in flight finished in time."""
        timeout = self.settings.drain_timeout
        for server in (self.http, self.metrics_http):
            if server is not None:
                server.stop_accepting()
        log.info("draining: no new connections; waiting up to %gs for requests in flight", timeout)
        if self._watcher is not None:
            self._watcher.cancel()
        waits = []
        if self.grpc is not None:
            waits.append(self.grpc.stop(timeout))
        clean = True
        if self.http is not None:
            results = await asyncio.gather(self.http.drain(timeout), *waits)
            clean = bool(results[0])
        if self.metrics_http is not None:
            await self.metrics_http.drain(0)
        if self.service is not None:
            await self.service.aclose()
        log.info("stopped%s", "" if clean else " (some requests were cut off)")
        self.stopped.set()
        return clean


def _metrics_only(app: HttpApp) -> Callable[[Request], Any]:
    async def handle(request: Request) -> Response:
        if request.path == "/metrics" and request.method in ("GET", "HEAD"):
            return await app.metrics(request)
        return problem(404, "this port serves GET /metrics only")

    return handle


# --- entry point ---------------------------------------------------------------------------------


def report_config_error(path: str | None, exc: RateLimitConfigError) -> None:
    for issue in exc.issues[:50]:
        log.error("%s", issue)
    log.error("config %s: %d problem%s; not starting", path, len(exc.issues), "s" * (len(exc.issues) != 1))


async def serve(settings: Settings, *, role: WorkerRole | None = None) -> int:
    """Run until SIGTERM/SIGINT (a worker: also until its supervisor is gone); the exit code."""
    server = Server(settings, reuse_port=role is not None)
    try:
        await server.start()
    except RateLimitConfigError as exc:
        report_config_error(settings.config, exc)
        return 1
    except SluicegateError as exc:
        log.error("not starting: %s", exc)
        await _quietly_stop(server)
        return 1
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = loop.create_task(server.reload("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # Everything loaded so far (modules, the config, the clients) lives as long as the process.
    # Frozen, it is no longer walked by every full garbage collection: on this 2-core machine
    # those walks paused the loop for up to 35 ms under load, long enough for store calls to
    # time out and decisions to degrade.
    gc.freeze()
    if role is None:
        log.info("ready (pid %d); SIGHUP reloads the config, SIGTERM drains and stops", os.getpid())
    else:
        log.debug("ready (pid %d)", os.getpid())
        role.ready()
        orphaned = loop.create_task(_until_orphaned(role.supervisor_pid, stop))
    await stop.wait()
    if role is not None:
        orphaned.cancel()
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
    await server.stop()
    return 0


async def _until_orphaned(supervisor_pid: int, stop: asyncio.Event) -> None:
    """Stop a worker whose supervisor died without telling it (SIGKILL, OOM killer): nothing
    else would ever stop it, and it would keep the ports."""
    while os.getppid() == supervisor_pid:
        await asyncio.sleep(_ORPHAN_POLL)
    log.warning("the supervisor (pid %d) is gone: draining and stopping", supervisor_pid)
    stop.set()


#: Seconds between a worker's checks that its supervisor is still there.
_ORPHAN_POLL: Final = 0.5


async def _quietly_stop(server: Server) -> None:
    with contextlib.suppress(Exception):
        if server.http is not None:
            await server.http.drain(0)
        if server.service is not None:
            await server.service.aclose()


def run(settings: Settings) -> int:
    """``sluicegate serve``: configure logging, then serve until stopped, in this process or,
    with ``workers`` above 1, in that many worker processes."""
    configure_logging(settings.log_format, settings.log_level)
    if settings.workers > 1:
        from .workers import supervise

        return supervise(settings)
    return run_loop(serve(settings))


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run ``main`` on uvloop when it is installed, else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        log.info("event loop: asyncio (pip install 'sluicegate[fast]' for uvloop)")
        return asyncio.run(main)
    log.info("event loop: uvloop")
    return uvloop.run(main)

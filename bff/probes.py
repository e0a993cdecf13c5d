"""Start-up and on-demand checks of everything the service talks to: ``vluna-bff check-config
--probe`` prints them, ``vluna-bff serve`` logs them before it starts (fatal with
``--strict-startup``).

- Redis: ``PING``, then the permissions of the commands the service uses, on keys and channels
  under ``cache.key_prefix`` (``ACL DRYRUN`` when the user may run it, otherwise by running each
  command on a short-lived probe key), and ``COMMAND INFO`` for commands renamed away;
- the identity provider: OpenID Connect discovery (``auth.jwt.discovery``, or a ``jwks_url`` that
  turns out to be a discovery document), the JWKS and whether any key fits
  ``auth.jwt.algorithms``; and, without discovery, whether the provider's own discovery document
  names a different issuer than ``auth.jwt.issuer`` (every token would be refused);
- Vluna: the readiness call (``bff.vluna_probe``), signed with the service key.

Each result is one line naming the URL or host:port (password replaced), what was tried and the
cause. Nothing here prints a secret: lines go through the log redaction as well.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError, ResponseError
from vlunaai import APIConnectionError, NotFoundError, VlunaAIError

from bff import netdiag
from bff.auth import oidc
from bff.auth.jwks import VerificationKey, key_fits, parse_jwks
from bff.redis_client import RedisClient, make_redis, redis_target
from bff.settings import Settings
from bff.telemetry.context import quiet_http
from bff.tokens.lock import ShardedNotifier
from bff.vluna import create_vluna_client, vluna_transport
from bff.vluna_probe import PROBE_OPERATION, probe_call

# Everything is imported above, before any probe runs: an import inside a coroutine blocks the
# event loop, and a slow one (the SDK's models) would make a concurrent probe time out.

# What the service runs on Redis (bff/tokens, bff/proxy/ratelimit.py), with example arguments
# under the key prefix, and what it is for. "{p}" is cache.key_prefix.
REDIS_COMMANDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("ping",), "readiness"),
    (("get", "{p}tok:probe"), "token cache"),
    (("set", "{p}tok:probe", "1", "px", "10000"), "token cache"),
    (("set", "{p}lock:probe", "1", "nx", "px", "10000"), "single-flight lock"),
    (("pttl", "{p}lock:probe"), "single-flight lock"),
    (("del", "{p}tok:probe"), "sign-out"),
    (("script", "load", "return 1"), "lock release"),
    (("evalsha", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "1", "{p}lock:probe"), "lock release"),
    (("eval", "return 1", "1", "{p}lock:probe"), "lock release"),
    (("publish", "{p}done:probe", "1"), "release notification"),
    (("psubscribe", "{p}done:*"), "release notifications (not with cluster)"),
    (("punsubscribe", "{p}done:*"), "release notifications (not with cluster)"),
    (("spublish", "{p}done:shard00", "1"), "release notification (cluster)"),
    (("ssubscribe", "{p}done:shard00"), "release notifications (cluster)"),
    (("sunsubscribe", "{p}done:shard00"), "release notifications (cluster)"),
    (("publish", "{p}l1:inval", "probe"), "first-level cache invalidations (cache.l1)"),
    (("subscribe", "{p}l1:inval"), "first-level cache invalidations (cache.l1)"),
    (("unsubscribe", "{p}l1:inval"), "first-level cache invalidations (cache.l1)"),
    (("publish", "{p}l1:hb:probe", "1"), "first-level cache heartbeat (cache.l1)"),
    (("subscribe", "{p}l1:hb:probe"), "first-level cache heartbeat (cache.l1)"),
    (("incr", "{p}iss:probe:1"), "issuance limits"),
    (("expire", "{p}iss:probe:1", "10"), "issuance limits"),
    (("incrby", "{p}rl:probe", "1"), "proxy rate limits"),
    (("expire", "{p}rl:probe", "10"), "proxy rate limits"),
)


@dataclass(frozen=True)
class ProbeLine:
    check: str
    ok: bool
    text: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.check}: {self.text}"


# -- Redis -----------------------------------------------------------------------------------------


_SHARDED = ("spublish", "ssubscribe", "sunsubscribe")


def _commands(prefix: str, cluster: bool, l1: bool) -> list[tuple[tuple[str, ...], str]]:
    out = []
    for args, why in REDIS_COMMANDS:
        if args[0] in (_SHARDED if not cluster else ("psubscribe", "punsubscribe", "publish")):
            continue  # a cluster uses sharded pub/sub, anything else pattern subscriptions
        if "{p}l1:" in " ".join(args) and not l1:
            continue  # the first level is off (or on a Cluster, where it never runs)
        out.append((tuple(a.replace("{p}", prefix) for a in args), why))
    return out


async def _on_one_node(client: RedisClient, *args: str) -> Any:
    """A command about the server rather than a key. A cluster client would look for keys in its
    arguments (ACL DRYRUN's) to pick a node, and fail; it is sent to any one node instead."""
    if isinstance(client, RedisCluster):
        return await client.execute_command(*args, target_nodes=RedisCluster.RANDOM)
    return await client.execute_command(*args)


def _is_noperm(exc: BaseException) -> bool:
    return "NOPERM" in str(exc) or "no permissions" in str(exc)


async def _dryrun(client: RedisClient, commands: Sequence[tuple[tuple[str, ...], str]]) -> list[str] | None:
    """Denied commands by ACL DRYRUN; None when this user may not run ACL WHOAMI / DRYRUN."""
    try:
        user = await _on_one_node(client, "ACL", "WHOAMI")
        user = user.decode() if isinstance(user, bytes) else str(user)
        denied: list[str] = []
        for args, why in commands:
            answer = await _on_one_node(client, "ACL", "DRYRUN", user, *args)
            text = answer.decode() if isinstance(answer, bytes) else str(answer)
            if text != "OK":
                denied.append(f"{args[0]} {' '.join(args[1:2])} ({why}: {text})".replace("  ", " "))
        return denied
    except ResponseError:
        return None  # no permission for ACL itself, or a server without ACL DRYRUN (< 7)


async def _exercise(
    client: RedisClient, commands: Sequence[tuple[tuple[str, ...], str]], cluster: bool
) -> tuple[list[str], list[str]]:
    """Denied commands found by running each one on the probe keys (they expire by themselves),
    and those that failed otherwise (neither allowed nor refused: said, never a traceback)."""
    denied: list[str] = []
    failed: list[str] = []
    for args, why in commands:
        name = args[0]
        try:
            if name in ("subscribe", "unsubscribe", "psubscribe", "punsubscribe"):
                if name in ("subscribe", "psubscribe"):
                    # Not on a cluster: its list has neither (sharded pub/sub; no first level).
                    assert not isinstance(client, RedisCluster)
                    pubsub = client.pubsub()
                    pattern = name == "psubscribe"
                    try:
                        await (pubsub.psubscribe if pattern else pubsub.subscribe)(args[1])
                        await pubsub.get_message(timeout=1.0)
                        await (pubsub.punsubscribe if pattern else pubsub.unsubscribe)(args[1])
                    finally:
                        with contextlib.suppress(Exception):
                            await pubsub.aclose()
                continue
            if name in ("ssubscribe", "sunsubscribe"):
                if name == "ssubscribe":
                    assert isinstance(client, RedisCluster)  # only a cluster's list has ssubscribe
                    # On the master serving the channel's slot, as the service subscribes.
                    spubsub: Any = ShardedNotifier.pubsub_on(client.get_node_from_key(args[1]))
                    try:
                        await spubsub.execute_command("SSUBSCRIBE", args[1])
                        await spubsub.get_message(timeout=1.0)
                        await spubsub.execute_command("SUNSUBSCRIBE", args[1])
                        await spubsub.get_message(timeout=1.0)
                    finally:
                        with contextlib.suppress(Exception):
                            await spubsub.aclose()
                continue
            if args[:2] == ("script", "load"):
                # On a cluster, SCRIPT LOAD goes to every master, which only this method knows.
                await client.script_load(args[2])
                continue
            # Upper case: the cluster client routes by the command's name as Redis spells it
            # (a lower-case PING found no node: "Missing key").
            await client.execute_command(name.upper(), *args[1:])
        except ResponseError as exc:
            if _is_noperm(exc):
                denied.append(f"{name} {' '.join(args[1:2])} ({why})".replace("  ", " "))
            # NOSCRIPT and the like: the command is allowed, only the probe's arguments are odd
        except (RedisError, ValueError) as exc:
            failed.append(f"{name} {' '.join(args[1:2])} ({why}: {type(exc).__name__})".replace("  ", " "))
    return denied, failed


async def _unknown_commands(
    client: RedisClient, commands: Sequence[tuple[tuple[str, ...], str]]
) -> list[str]:
    names = sorted({args[0] for args, _ in commands})
    try:
        info = await _on_one_node(client, "COMMAND", "INFO", *names)
    except ResponseError:
        return []  # COMMAND not allowed: the permission checks above still ran
    if not isinstance(info, (list, tuple)):
        return []
    return [n for n, entry in zip(names, info, strict=False) if entry is None]


async def probe_redis(settings: Settings, timeout: float) -> list[ProbeLine]:
    c = settings.cache
    if c.backend != "redis":
        return []
    target = redis_target(c.redis)
    r = c.redis
    bounded = {"socket_timeout_sec": timeout, "connect_timeout_sec": min(timeout, r.connect_timeout_sec * 2)}
    # One attempt: redis-py retries a refused connection with backoff by default, which would
    # turn "refused" into "timed out" here.
    client = make_redis(r.model_copy(update=bounded), retry=Retry(NoBackoff(), 0))
    try:
        try:
            await asyncio.wait_for(client.ping(), timeout)
        except ResponseError as exc:
            if _is_noperm(exc):
                return [ProbeLine("redis", False, f"{target}: PING refused: {exc}")]
            return [ProbeLine("redis", False, f"{target}: PING: {exc}")]
        except asyncio.TimeoutError:
            return [ProbeLine("redis", False, f"{target}: PING: no answer within {timeout:g} s")]
        except Exception as exc:
            return [ProbeLine("redis", False, f"{target}: PING: {_redis_cause(exc)}")]
        commands = _commands(c.key_prefix, r.cluster, c.l1.enabled and not r.cluster)
        denied = await _dryrun(client, commands)
        how = "ACL DRYRUN"
        failed: list[str] = []
        if denied is None:
            how = "running each command on a probe key"
            denied, failed = await _exercise(client, commands, r.cluster)
        unknown = await _unknown_commands(client, commands)
        problems = []
        if denied:
            problems.append(f"this user may not run: {'; '.join(denied)} (checked by {how})")
        if failed:
            problems.append(f"the probe could not run: {'; '.join(failed)}")
        if unknown:
            problems.append(f"the server does not know (renamed or disabled): {', '.join(unknown)}")
        if problems:
            return [ProbeLine("redis", False, f"{target}: PING answered, but " + "; ".join(problems))]
        return [
            ProbeLine(
                "redis",
                True,
                f"{target}: PING answered; the {len(commands)} commands the service uses are allowed"
                f" on {c.key_prefix}* ({how})",
            )
        ]
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


def _redis_cause(exc: BaseException) -> str:
    for e in (exc, exc.__cause__, exc.__context__):
        if isinstance(e, AuthenticationError):
            return "authentication failed (wrong user name or password in cache.redis.url)"
    seen: BaseException | None = exc
    for _ in range(8):  # the cluster client wraps a refusal twice or more
        if seen is None:
            break
        if isinstance(seen, NoPermissionError):
            if "cluster" in str(seen).lower():
                # redis-py then says "Cluster mode is not enabled on this node": not the cause.
                return f"{seen} (a Cluster user needs +cluster|slots +command: docs/operations.md)"
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    name = type(exc).__name__
    if name == "MasterNotFoundError":
        return "no Sentinel answered with a master of that name"
    cause = netdiag.cause(exc)
    return cause.text


# -- the identity provider -------------------------------------------------------------------------


def _describe_keys(keys: Sequence[VerificationKey]) -> str:
    kinds = {
        f"{type(k.key).__name__.removesuffix('PublicKey').lstrip('_')}/{k.alg or 'any alg'}" for k in keys
    }
    return ", ".join(sorted(kinds)) or "none"


async def probe_identity_provider(
    settings: Settings, http: httpx.AsyncClient, timeout: float
) -> list[ProbeLine]:
    a = settings.auth
    j = a.jwt
    if not {"bearer", "cookie"} & set(a.methods):
        return []
    lines: list[ProbeLine] = []
    jwks_url = j.jwks_url
    algorithms = list(j.algorithms)
    discovered: oidc.Discovery | None = None
    if j.discovery and j.issuer:
        url = oidc.discovery_url(j.issuer)
        try:
            discovered = oidc.parse_discovery(await oidc.get_json(http, url, timeout), url, j.issuer)
        except oidc.FetchError as exc:
            return [ProbeLine("auth.jwt.discovery", False, exc.text)]
        jwks_url = discovered.jwks_uri
    if jwks_url is None:
        return lines
    check = "auth.jwt.discovery" if discovered else "auth.jwt.jwks_url"
    try:
        doc = await oidc.get_json(http, jwks_url, timeout)
        if discovered is None and oidc.is_discovery_document(doc):
            # The most common mistake: the discovery document in jwks_url. The service follows it.
            discovered = oidc.parse_discovery(doc, jwks_url, j.issuer)
            lines.append(
                ProbeLine(
                    check,
                    True,
                    f"GET {netdiag.redacted_url(jwks_url)}: an OpenID Connect discovery document; the "
                    f"service uses its jwks_uri {netdiag.redacted_url(discovered.jwks_uri)}",
                )
            )
            jwks_url = discovered.jwks_uri
            doc = await oidc.get_json(http, jwks_url, timeout)
        oidc.check_jwks_shape(doc, jwks_url)
    except oidc.FetchError as exc:
        return [*lines, ProbeLine(check, False, exc.text)]
    if discovered is not None:
        algorithms = oidc.effective_algorithms(
            algorithms, "algorithms" in j.model_fields_set, discovered.algorithms
        )
    keys = parse_jwks(doc)
    usable = [k for k in keys if any(key_fits(alg, k.key) and k.alg in (None, alg) for alg in algorithms)]
    shown = netdiag.redacted_url(jwks_url)
    if not usable:
        lines.append(
            ProbeLine(
                check,
                False,
                f"GET {shown}: no key can verify {', '.join(algorithms)} tokens: {len(keys)} usable "
                f"signing key(s) ({_describe_keys(keys)}) of {len(doc['keys'])} listed",
            )
        )
        return lines
    kids = ", ".join(sorted({str(k.kid) for k in usable}))
    served = [alg for alg in algorithms if any(key_fits(alg, k.key) and k.alg in (None, alg) for k in usable)]
    lines.append(
        ProbeLine(check, True, f"GET {shown}: {len(usable)} key(s) for {', '.join(served)} (kid {kids})")
    )
    if discovered is None and j.issuer:
        lines.extend(await _issuer_hint(http, j.issuer, min(timeout, 3.0)))
    return lines


async def _issuer_hint(http: httpx.AsyncClient, issuer: str, timeout: float) -> list[ProbeLine]:
    """Without discovery: does the provider's own discovery document name another issuer?"""
    url = oidc.discovery_url(issuer)
    try:
        doc = await oidc.get_json(http, url, timeout)
    except oidc.FetchError:
        return []  # not every issuer publishes discovery: no finding either way
    announced = doc.get("issuer") if isinstance(doc, dict) else None
    if isinstance(announced, str) and announced != issuer:
        return [
            ProbeLine(
                "auth.jwt.issuer",
                False,
                f"{issuer!r} differs from the issuer the provider announces at {netdiag.redacted_url(url)}: "
                f"{announced!r}; tokens carry the provider's, so every one would be refused "
                "(they must be identical, trailing slash included)",
            )
        ]
    return []


# -- Vluna -----------------------------------------------------------------------------------------

_VLUNA_HINTS = {
    "AUTH.INVALID_SERVICE_SIGNATURE": "the secret does not belong to vluna.service_key_id",
    "AUTH.SERVICE_KEY_NOT_FOUND": "vluna.service_key_id is unknown to this server",
    "AUTH.SERVICE_KEY_REALM_FORBIDDEN": "the key belongs to another realm than vluna.realm_id",
    "AUTH.UNKNOWN_REALM": "vluna.realm_id is unknown to this server",
}


async def probe_vluna(settings: Settings, timeout: float) -> list[ProbeLine]:
    v = settings.vluna
    # Its own client, without retries: one call says what is wrong.
    client = create_vluna_client(v, transport=vluna_transport(v), max_retries=0)
    if client is None:
        return []
    what = (
        f"signed {PROBE_OPERATION} at {netdiag.redacted_url(v.base_url)}"
        f" (realm {v.realm_id}, key {v.service_key_id})"
    )
    quiet = quiet_http.set(True)  # its httpx line at debug, like every probe call's
    try:
        await probe_call(client, timeout)
    except APIConnectionError as exc:
        return [ProbeLine("vluna", False, f"{what}: {netdiag.cause(exc).text}")]
    except VlunaAIError as exc:
        status = exc.status
        code = exc.code or "no error code"
        hint = _VLUNA_HINTS.get(exc.code or "")
        if hint is None and isinstance(exc, NotFoundError):
            hint = "no Vluna API at this URL: vluna.base_url must end in /mgt/v1"
        text = f"{what}: HTTP {status} {code} ({exc.message[:160]})"
        return [ProbeLine("vluna", False, text + (f": {hint}" if hint else ""))]
    except asyncio.TimeoutError:
        return [ProbeLine("vluna", False, f"{what}: no answer within {timeout:g} s")]
    finally:
        quiet_http.reset(quiet)
        with contextlib.suppress(Exception):
            await client.close()
    return [ProbeLine("vluna", True, f"{what}: accepted")]


# -- all of them -----------------------------------------------------------------------------------


async def run_probes(settings: Settings, timeout: float = 5.0) -> list[ProbeLine]:
    """Every check, concurrently; each bounded by ``timeout`` seconds (plus its own retries: none)."""
    async with httpx.AsyncClient(follow_redirects=False) as http:
        groups = await asyncio.gather(
            probe_redis(settings, timeout),
            probe_identity_provider(settings, http, timeout),
            probe_vluna(settings, timeout),
        )
    return [line for group in groups for line in group]

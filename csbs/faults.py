"""Fault rules (issue 13): injected failures and delays on the calls a process serves, and the
server interceptor that applies them. Served by every process (coordinator and region nodes).

A rule names a method or an fnmatch glob of methods, and says what a call it acts on gets: a
delay, a status code and message, or both; for how many calls (`count`: then the rule is spent
and removed) and with what probability (drawn from a generator seeded with the rule's seed, one
draw per matching call, so the same run acts on the same calls). Rules are tried in the order
they were added: each one a call reaches counts it as matched; delays add up; the first that
fails the call ends it, and the rules after it never see that call.

Rules live in the process's memory only: a restart forgets them (as LocalStack's chaos API
does), and adds again those the cluster config gives. They never apply to FaultInjection, health
or reflection (EXEMPT_SERVICES), so a process can always be watched and cleared.

The interceptor applies them when a call starts, after its credential was checked (it is placed
after AuthInterceptor), before the servicer sees the call. An injected failure is not a domain
error: the call is aborted with the rule's code and message as they are."""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import Any

import grpc
from google.protobuf.descriptor import FileDescriptor

from csbs.errors import InvalidArgument, NotFound
from csbs.rpc import abort_simulated, rewrap

log = logging.getLogger(__name__)

# What a rule of the cluster config names as its process, besides a region's ID.
COORDINATOR_PROCESS = "coordinator"
FAULT_INJECTION_SERVICE = "csbs.v1.FaultInjection"
EXEMPT_SERVICES = frozenset(
    {
        FAULT_INJECTION_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)
MAX_METHOD_CHARS = 256
MAX_MESSAGE_CHARS = 1024
MAX_DELAY_MS = 60_000
MAX_COUNT = (1 << 32) - 1
MAX_SEED = (1 << 64) - 1
_GLOB = re.compile(r"[*?\[]")
_CODES = {code.name: code for code in grpc.StatusCode}
# How often a delayed call looks whether its caller has gone (then the delay ends early).
_DELAY_STEP = 0.05


@dataclass(frozen=True)
class FaultSpec:
    """A rule as asked for (by a call or by the config), before it is checked."""

    method: str
    code: str = ""
    message: str = ""
    count: int = 0
    probability: float = 1.0
    seed: int = 0
    delay_ms: int = 0


@dataclass(frozen=True)
class FaultRule:
    """A rule as a process holds it: checked, with its ID and counters."""

    rule_id: str
    process: str  # "coordinator" or the region's ID
    method: str  # in the /package.Service/Method form (a glob stays a glob)
    code: str  # a status code's name; "" for a rule that only delays
    message: str  # what a failed call says
    count: int  # 0: no limit
    probability: float
    seed: int
    delay_ms: int
    calls_matched: int
    calls_failed: int
    remaining: int  # calls it will still act on, with a count; 0 without


@dataclass(frozen=True)
class Verdict:
    """What the rules do to one call: wait `delay_seconds`, then fail with `code` unless None."""

    delay_seconds: float
    code: grpc.StatusCode | None
    message: str


def service_of(method: str) -> str:
    """'/csbs.v1.RegionNode/CreateImage' -> 'csbs.v1.RegionNode'."""
    return method.lstrip("/").partition("/")[0]


def methods_of(proto_file: FileDescriptor) -> frozenset[str]:
    """Every method of every service of a .proto file, as gRPC names them on the wire: the
    methods a process that serves all of that file's services has (the coordinator serves
    coordinator.proto's, a region node region_node.proto's)."""
    return frozenset(
        f"/{service.full_name}/{method.name}"
        for service in proto_file.services_by_name.values()
        for method in service.methods
    )


def normalized_method(text: str) -> str:
    """A method or glob in the /package.Service/Method form: `csbs.v1.RegionNode.CreateImage`
    becomes `/csbs.v1.RegionNode/CreateImage`, `csbs.v1.RegionNode/*` `/csbs.v1.RegionNode/*`;
    a glob that starts with `*` is kept as it is (`*` matches `/` too)."""
    method = text.strip()
    if "/" not in method and "." in method:
        service, _, name = method.rpartition(".")
        return f"/{service}/{name}"
    if not method.startswith(("/", "*")):
        return "/" + method
    return method


def checked(spec: FaultSpec, served: frozenset[str]) -> FaultSpec:
    """The spec with its method in the /package.Service/Method form and its code's canonical
    name ("" for delay only), or InvalidArgument naming the first field that is wrong.
    `served`: the methods of the process the rule is for."""
    if not spec.method.strip():
        raise InvalidArgument(
            "method: required: a full method name (/csbs.v1.RegionNode/CreateImage) or a glob "
            "(*/CreateImage)"
        )
    if len(spec.method) > MAX_METHOD_CHARS:
        raise InvalidArgument(f"method: at most {MAX_METHOD_CHARS} characters")
    method = normalized_method(spec.method)
    if not _GLOB.search(method):
        if service_of(method) in EXEMPT_SERVICES:
            raise InvalidArgument(
                f"method: {method}: fault rules never apply to FaultInjection, health or "
                "reflection, so that a process can always be cleared"
            )
        if method not in served:
            raise InvalidArgument(
                f"method: this process serves no method {method} (a full name must be one it "
                "serves; a glob such as */CreateImage may match none)"
            )
    code = spec.code.strip().upper()
    if code == "OK":
        code = ""
    if code and code not in _CODES:
        raise InvalidArgument(
            f"code: {spec.code!r} is not a gRPC status code (such as UNAVAILABLE, "
            "DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL); empty or OK only delays"
        )
    if len(spec.message) > MAX_MESSAGE_CHARS:
        raise InvalidArgument(f"message: at most {MAX_MESSAGE_CHARS} characters")
    if spec.message and not code:
        raise InvalidArgument("message: a rule that only delays sends no message; give a code")
    if not 0 <= spec.count <= MAX_COUNT:
        raise InvalidArgument(f"count: from 0 (no limit) to {MAX_COUNT}")
    if not 0 < spec.probability <= 1:
        raise InvalidArgument(
            f"probability: {spec.probability} is not in 0 < probability <= 1 (1 when not given)"
        )
    if not 0 <= spec.seed <= MAX_SEED:
        raise InvalidArgument(f"seed: from 0 to {MAX_SEED}")
    if not 0 <= spec.delay_ms <= MAX_DELAY_MS:
        raise InvalidArgument(f"delay_ms: from 0 to {MAX_DELAY_MS} milliseconds")
    if not code and not spec.delay_ms:
        raise InvalidArgument(
            "delay_ms: a rule without a code only delays, so it needs delay_ms > 0 (or give a code)"
        )
    return replace(spec, method=method, code=code)


class _Held:
    """A rule and its counters, changed only under FaultRules' lock."""

    def __init__(self, rule_id: str, process: str, spec: FaultSpec) -> None:
        self.rule_id = rule_id
        self.process = process
        self.spec = spec
        self.code = _CODES[spec.code] if spec.code else None
        self.message = spec.message or (
            f"injected fault: fault rule {rule_id} of {process} fails {spec.method} with "
            f"{spec.code} (FaultInjection; clear it to stop)"
            if spec.code
            else ""
        )
        self.random = random.Random(spec.seed)
        self.matched = 0
        self.acted = 0
        self.failed = 0

    def snapshot(self) -> FaultRule:
        spec = self.spec
        return FaultRule(
            rule_id=self.rule_id,
            process=self.process,
            method=spec.method,
            code=spec.code,
            message=self.message,
            count=spec.count,
            probability=spec.probability,
            seed=spec.seed,
            delay_ms=spec.delay_ms,
            calls_matched=self.matched,
            calls_failed=self.failed,
            remaining=spec.count - self.acted if spec.count else 0,
        )


class FaultRules:
    """The rules one process holds. `served`: the methods it serves, which a rule's full
    method name must be one of; `initial`: the config's rules, added at once (a wrong one
    raises InvalidArgument, as a call adding it would)."""

    def __init__(
        self, process: str, served: frozenset[str], initial: Iterable[FaultSpec] = ()
    ) -> None:
        self.process = process
        self._served = served
        self._rules: list[_Held] = []
        self._lock = threading.Lock()
        for spec in initial:
            self.add(spec)

    @property
    def empty(self) -> bool:
        return not self._rules

    def add(self, spec: FaultSpec) -> FaultRule:
        spec = checked(spec, self._served)
        held = _Held(f"fr-{uuid.uuid4().hex[:12]}", self.process, spec)
        with self._lock:
            self._rules.append(held)
            rule = held.snapshot()
        log.info("fault rule added: %s", rule)
        return rule

    def list(self) -> list[FaultRule]:
        with self._lock:
            return [held.snapshot() for held in self._rules]

    def clear(self, rule_id: str = "") -> int:
        """Removes the rule `rule_id`, or every rule when it is empty; returns how many."""
        with self._lock:
            if not rule_id:
                cleared = len(self._rules)
                self._rules.clear()
            else:
                kept = [held for held in self._rules if held.rule_id != rule_id]
                cleared = len(self._rules) - len(kept)
                if not cleared:
                    raise NotFound("fault rule", rule_id)
                self._rules = kept
        if cleared:
            log.info("fault rules cleared: %d", cleared)
        return cleared

    def decide(self, method: str) -> Verdict | None:
        """What the rules do to a call of `method` starting now (None: nothing); counts it."""
        delay_ms = 0
        with self._lock:
            for held in list(self._rules):
                spec = held.spec
                if not fnmatchcase(method, spec.method):
                    continue
                held.matched += 1
                if spec.probability < 1 and held.random.random() >= spec.probability:
                    continue
                held.acted += 1
                if spec.count and held.acted >= spec.count:
                    self._rules.remove(held)  # spent
                delay_ms += spec.delay_ms
                if held.code is not None:
                    held.failed += 1
                    return Verdict(delay_ms / 1000, held.code, held.message)
        return Verdict(delay_ms / 1000, None, "") if delay_ms else None


class FaultInterceptor(grpc.ServerInterceptor):  # type: ignore[misc]
    """Applies a process's fault rules to every call of its own services. Place it after
    AuthInterceptor, so that a call without the right credential is refused as ever and never
    counts for a rule."""

    def __init__(self, rules: FaultRules) -> None:
        self._rules = rules

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        handler = continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or self._rules.empty or service_of(method) in EXEMPT_SERVICES:
            return handler

        def apply(inner: Callable[[Any, Any], Any], request: Any, context: Any) -> Any:
            verdict = self._rules.decide(method)
            if verdict is not None:
                _wait(verdict.delay_seconds, context)
                if verdict.code is not None:
                    abort_simulated(context, verdict.code, verdict.message)
            return inner(request, context)

        return rewrap(handler, apply)


def _wait(seconds: float, context: grpc.ServicerContext) -> None:
    """Sleeps `seconds`, or less if the caller goes away meanwhile (its thread is freed)."""
    deadline = time.monotonic() + seconds
    while context.is_active():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, _DELAY_STEP))

"""Who a caller is: accounts' API tokens, the cluster credential and the operator credential.

Every process of a cluster reads one secrets file (`<data_dir>/secrets.json`, owner-only):

- the SHA-256 of every account's API tokens (never the tokens themselves: a token is shown once,
  when it is issued, like a real cloud's access keys);
- the SHA-256 of the operator credentials (clock, replication capability);
- the cluster credential, in plain text: the coordinator presents it on the nodes' internal calls
  and the nodes check it. No account token can stand in for it.

The first process to start creates the file (under a lock, atomically) and issues what the
config does not give: one token per account and one operator credential. Nothing here knows
gRPC: csbs/auth.py turns a caller's metadata into a `Caller` with `ClusterSecrets.identify`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csbs.config import ClusterConfig, ConfigError
from csbs.files import exclusive_lock, write_atomic
from csbs.tls import ProcessTls, ensure_process_tls

SECRETS_VERSION = 1
TOKEN_PREFIX = "csbs_"
OPERATOR_PREFIX = "csbsop_"


class Role(enum.Enum):
    USER = "an account's API token"
    CLUSTER = "the cluster credential"
    OPERATOR = "the operator credential"


@dataclass(frozen=True)
class Caller:
    """Who made a call. `account_id` is the account a user acts for, or the account the
    coordinator acts for (cluster credential with an acting account); empty for the operator
    and for the coordinator's own calls, which act for no account."""

    role: Role
    account_id: str = ""


def token_hash(token: str) -> str:
    """Tokens are long and random, so a plain SHA-256 (no salt, no stretching) is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str = TOKEN_PREFIX) -> str:
    return prefix + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class ClusterSecrets:
    account_token_hashes: Mapping[str, str]  # token hash -> account ID
    operator_hashes: frozenset[str]
    cluster_credential: str

    def identify(self, token: str) -> Caller | None:
        """The caller a presented token stands for, or None for an unknown token."""
        if secrets.compare_digest(token, self.cluster_credential):
            return Caller(Role.CLUSTER)
        digest = token_hash(token)
        account_id = self.account_token_hashes.get(digest)
        if account_id is not None:
            return Caller(Role.USER, account_id)
        if digest in self.operator_hashes:
            return Caller(Role.OPERATOR)
        return None

    @property
    def account_ids(self) -> frozenset[str]:
        return frozenset(self.account_token_hashes.values())


@dataclass(frozen=True)
class IssuedTokens:
    """Tokens issued by this start (plain text, shown once): account ID -> token, and the
    operator credential if one was issued."""

    accounts: Mapping[str, str]
    operator: str | None


def _read(path: Path) -> dict[str, Any]:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            f"{path}: the cluster secrets file is readable by others (mode {mode:o}); "
            f"it must be owner-only: chmod 600 {path}"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a cluster secrets file ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("version") != SECRETS_VERSION:
        raise ConfigError(f"{path}: not a version {SECRETS_VERSION} cluster secrets file")
    return raw


def ensure_cluster_secrets(config: ClusterConfig) -> tuple[ClusterSecrets, IssuedTokens]:
    """Reads the cluster secrets file, first creating it or adding to it what the config asks
    for: the hashes of the tokens the config gives, a new token for an account that has none,
    an operator credential if there is none. Returns the secrets and what was newly issued."""
    path = config.secrets_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.parent / f".{path.name}.lock"):
        raw: dict[str, Any] = (
            _read(path)
            if path.exists()
            else {
                "version": SECRETS_VERSION,
                "cluster_credential": new_token("csbscl_"),
                "accounts": {},
                "operator": [],
            }
        )
        before = json.dumps(raw, sort_keys=True)
        accounts: dict[str, list[str]] = raw["accounts"]
        issued: dict[str, str] = {}
        for account in config.accounts:
            hashes = accounts.setdefault(account.account_id, [])
            for token in account.tokens:
                if token_hash(token) not in hashes:
                    hashes.append(token_hash(token))
            if not hashes:
                issued[account.account_id] = new_token()
                hashes.append(token_hash(issued[account.account_id]))
        operator_hashes: list[str] = raw["operator"]
        for token in config.operator_tokens:
            if token_hash(token) not in operator_hashes:
                operator_hashes.append(token_hash(token))
        operator = None
        if not operator_hashes:
            operator = new_token(OPERATOR_PREFIX)
            operator_hashes.append(token_hash(operator))
        if json.dumps(raw, sort_keys=True) != before:
            write_atomic(path, json.dumps(raw, indent=2, sort_keys=True).encode())
    configured = {a.account_id for a in config.accounts}
    return (
        ClusterSecrets(
            # An account removed from the config loses its tokens.
            account_token_hashes={
                digest: account_id
                for account_id, hashes in accounts.items()
                if account_id in configured
                for digest in hashes
            },
            operator_hashes=frozenset(operator_hashes),
            cluster_credential=str(raw["cluster_credential"]),
        ),
        IssuedTokens(issued, operator),
    )


@dataclass(frozen=True)
class ProcessSecurity:
    """What a process of the cluster needs at start: the secrets to check callers with, and its
    TLS certificate when the cluster runs with TLS."""

    secrets: ClusterSecrets
    tls: ProcessTls | None
    issued: IssuedTokens


def process_security(config: ClusterConfig, process_name: str, tls: bool) -> ProcessSecurity:
    secrets, issued = ensure_cluster_secrets(config)
    material = ensure_process_tls(config.tls_dir, process_name) if tls else None
    return ProcessSecurity(secrets, material, issued)


def describe_issued(issued: IssuedTokens) -> list[str]:
    """Lines that show newly issued tokens once (they are kept only as hashes)."""
    lines = [f"API token of account {a!r}: {t}" for a, t in issued.accounts.items()]
    if issued.operator is not None:
        lines.append(f"operator credential: {issued.operator}")
    return lines

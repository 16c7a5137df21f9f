"""``flask tokenreq ...``: manage keys, revoke tokens, read the audit log (DESIGN §7d).

A Click group that Flask finds through the ``flask.commands`` entry point (as
Flask-Limiter's ``flask limiter``), so every app with flask-tokenreq
installed has it::

    flask --app 'examples.provider_app:create_app()' tokenreq keys create --name "CI Key"

Commands work on the keys of the app's :class:`~flask_tokenreq.TokenProvider`
(static keys from configuration, managed keys from the database). With
``--json`` each prints one JSON document on stdout, for scripts. A mistake
(an unknown key, a bad duration, a capability that is not JSON, a change to
a static key, ...) prints one line on stderr and exits with status 1,
changing nothing. No output shows a secret except the full key that ``keys
create`` and ``keys rotate`` print once. Text output (without ``--json``)
escapes control characters: some values (a clientId, a key name in a URL)
come from clients.

Durations are a whole number and a unit: ``500ms``, ``90s``, ``15m``, ``1h``,
``30d`` (``0`` for no grace period).
"""

from __future__ import annotations

import getpass
import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast, runtime_checkable

import click
from flask import current_app, url_for
from flask.cli import AppGroup
from werkzeug.routing import BuildError

from .errors import ConfigError, TokenReqError

if TYPE_CHECKING:  # pragma: no cover
    from .audit import AuditLog
    from .keys.chain import KeyChain
    from .provider import TokenProvider

__all__ = [
    "ADMIN_EXTENSION",
    "ADMIN_PAGE_ENDPOINT",
    "TicketIssuer",
    "cli",
    "parse_duration",
]

#: Where the key page's extension (``KeyAdmin``) registers itself in ``app.extensions``.
ADMIN_EXTENSION = "tokenreq_admin"
#: The endpoint of the key page (``GET <prefix>/?ticket=…``): ``ticket`` links to it.
ADMIN_PAGE_ENDPOINT = "tokenreq_admin.page"
#: Scopes of a ticket unless ``--scope`` says otherwise (DESIGN §7c).
DEFAULT_SCOPES = ("keys:read", "keys:write")

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d{1,12})(ms|s|m|h|d)")
#: Longest duration accepted (100 years): anything longer is a typo.
_MAX_DURATION_MS = 100 * 365 * 86_400_000
#: What text output escapes: C0 controls, DEL and C1 controls (Unicode category Cc).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

F = TypeVar("F", bound=Callable[..., Any])


@runtime_checkable
class TicketIssuer(Protocol):
    """What ``flask tokenreq ticket`` needs of ``app.extensions["tokenreq_admin"]``.

    ``issue_ticket(actor, scopes)`` returns a fresh single-use ticket for the
    key page; the page itself is the :data:`ADMIN_PAGE_ENDPOINT` route, which
    takes the ticket as its ``ticket`` query parameter.
    """

    def issue_ticket(self, actor: str, scopes: Sequence[str] = ...) -> str: ...


# -- errors: one line on stderr, exit status 1 -----------------------------------------


def _one_line(text: str) -> str:
    """An error message as one line, control characters escaped (see :func:`_printable`)."""
    return _printable(" ".join(str(text).split()))


class _Group(AppGroup):
    """A command group (with an app context) whose mistakes are one line and exit 1.

    Click's own usage errors (a missing option, an unknown command) would
    print the usage and exit 2; the library's errors would be a traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.ClickException as exc:
            if isinstance(exc, click.UsageError) or "\n" in exc.format_message():
                raise click.ClickException(_one_line(exc.format_message())) from None
            raise
        except (TokenReqError, ConfigError) as exc:
            raise click.ClickException(_one_line(str(exc))) from None


def _json_option(fn: F) -> F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document (for scripts)."
    )(fn)


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, ensure_ascii=False))


def _printable(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1; tab and newline too) as ``\\x1b``.

    Output shows values clients chose (a clientId, a key name in a URL): an escape
    sequence must not reach the operator's terminal, nor a newline forge a line.
    """
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _echo(line: str) -> None:
    """Print one line of text output (not ``--json``), control characters escaped."""
    click.echo(_printable(line))


# -- what the commands work on ---------------------------------------------------------


def _provider() -> TokenProvider:
    provider = current_app.extensions.get("tokenreq_provider")
    if provider is None:
        raise click.ClickException(
            "no TokenProvider is initialised on this app: `flask tokenreq` manages the "
            "provider's keys (check --app)"
        )
    return cast("TokenProvider", provider)


def _keys() -> KeyChain:
    return _provider().keys


def _now() -> int:
    return _provider()._state().now()


def _actor() -> str:
    """Who made a change, for the audit log: ``cli:<login name>``."""
    try:
        user = getpass.getuser()
    except Exception:  # no login name in a bare container
        return "cli"
    return f"cli:{user}"[:255]


def parse_duration(option: str, text: str) -> int:
    """``500ms``, ``90s``, ``15m``, ``1h``, ``30d`` (or ``0``) in milliseconds.

    Raises :class:`click.ClickException` naming ``option``.
    """
    value = text.strip()
    if value == "0":
        return 0
    match = _DURATION.fullmatch(value)
    if match is None:
        raise click.ClickException(
            f"{option} must be a duration such as 500ms, 90s, 15m, 1h or 30d, got {value[:40]!r}"
        )
    ms = int(match.group(1)) * _UNITS_MS[match.group(2)]
    if ms > _MAX_DURATION_MS:
        raise click.ClickException(f"{option} is longer than 100 years")
    return ms


def _capability(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise click.ClickException(
            '--capability must be JSON, e.g. \'{"chat:*": ["publish", "subscribe"]}\''
        ) from None


def _time(ms: int | None) -> str:
    """``ms`` as an ISO 8601 UTC time; as the number itself when no date can show it
    (past the year 9999: a row written before ``expires`` had a maximum)."""
    if ms is None:
        return "-"
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    except (ValueError, OverflowError, OSError):
        return f"{ms} ms"
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _print_keys(documents: Iterable[dict[str, Any]]) -> None:
    rows = [
        tuple(
            _printable(str(v))  # escaped before the widths are measured
            for v in (d["keyName"], d["status"], d["source"], d["name"] or "-", _time(d["expires"]))
        )
        for d in documents
    ]
    if not rows:
        _echo("No keys.")
        return
    header = ("KEY NAME", "STATUS", "SOURCE", "NAME", "EXPIRES")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        _echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


# -- the commands ----------------------------------------------------------------------


@click.group("tokenreq", cls=_Group)
def cli() -> None:
    """Manage flask-tokenreq keys, token revocations and the audit log."""


@cli.group("keys", cls=_Group)
def keys_group() -> None:
    """Create, list, rotate and revoke keys."""


@keys_group.command("create")
@click.option("--name", required=True, help="Free text for people, e.g. 'CI Key'.")
@click.option("--capability", help='What its tokens may at most do (JSON), e.g. \'{"*":["*"]}\'.')
@click.option("--expires", help="When it stops working, from now: 30d, 12h, ...")
@_json_option
def keys_create(name: str, capability: str | None, expires: str | None, as_json: bool) -> None:
    """Create a managed key; prints the full key, this once."""
    cap = _capability(capability)
    lifetime = None if expires is None else parse_duration("--expires", expires)
    if lifetime == 0:
        raise click.ClickException("--expires must be a duration after now, e.g. 30d")
    store = _keys().for_change()
    expires_ms = None if lifetime is None else _now() + lifetime
    key, full = store.create(name, cap, expires_ms, actor=_actor())
    if as_json:
        _print_json(
            {
                "keyName": key.key_name,
                "key": full,
                "name": key.name,
                "capability": key.capability.to_dict(),
                "created": key.created_ms,
                "expires": key.expires_at_ms,
            }
        )
        return
    _echo(f"Created key {key.key_name} ({key.name}).")
    _echo(f"Key (shown this once, store it now): {full}")


@keys_group.command("list")
@click.option(
    "--status",
    type=click.Choice(["active", "revoked", "expired", "all"]),
    default="all",
    show_default=True,
)
@_json_option
def keys_list(status: str, as_json: bool) -> None:
    """List keys (static and managed), without secrets."""
    documents = _keys().key_dicts(status, _now())
    if as_json:
        _print_json(documents)
    else:
        _print_keys(documents)


@keys_group.command("get")
@click.argument("key_name", metavar="KEYNAME")
@_json_option
def keys_get(key_name: str, as_json: bool) -> None:
    """Show one key, without its secret."""
    document = _keys().key_dict(key_name, _now())
    if document is None:
        raise click.ClickException(f"no key named {key_name[:255]!r}")
    if as_json:
        _print_json(document)
        return
    for field in ("keyName", "name", "display", "status", "source"):
        _echo(f"{field}: {document[field] if document[field] is not None else '-'}")
    _echo(f"capability: {json.dumps(document['capability'], ensure_ascii=False)}")
    for field in ("created", "expires", "revoked", "lastUsed"):
        _echo(f"{field}: {_time(document[field])}")
    if document["revokedReason"]:
        _echo(f"revokedReason: {document['revokedReason']}")


@keys_group.command("rotate")
@click.argument("key_name", metavar="KEYNAME")
@click.option("--grace", default="0", show_default=True, help="How long the old secret works.")
@_json_option
def keys_rotate(key_name: str, grace: str, as_json: bool) -> None:
    """Give a key a new secret; prints the full key, this once."""
    grace_ms = parse_duration("--grace", grace)
    store = _keys().for_change(key_name)
    full = store.rotate(key_name, grace_ms, actor=_actor())
    until = _now() + grace_ms if grace_ms else None
    if as_json:
        _print_json({"keyName": key_name, "key": full, "grace": grace_ms, "graceUntil": until})
        return
    old = f"the old secret works until {_time(until)}" if until else "the old secret is refused"
    _echo(f"Rotated key {key_name}: {old}.")
    _echo(f"Key (shown this once, store it now): {full}")


@keys_group.command("revoke")
@click.argument("key_name", metavar="KEYNAME")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@_json_option
def keys_revoke(key_name: str, reason: str, as_json: bool) -> None:
    """Revoke a key for good: its exchanges and every token made from it are refused."""
    store = _keys().for_change(key_name)
    info = store.revoke(key_name, reason, actor=_actor())
    if as_json:
        _print_json({**info.to_dict(_now()), "source": "database"})
        return
    _echo(f"Revoked key {key_name}: its exchanges get 40131 and its tokens 40141.")


@keys_group.command("reencrypt")
@_json_option
def keys_reencrypt(as_json: bool) -> None:
    """Re-encrypt every stored secret under the newest TOKENREQ_KEY_ENCRYPTION_KEYS key."""
    count = _keys().for_change().reencrypt(actor=_actor())
    if as_json:
        _print_json({"reencrypted": count})
    else:
        _echo(f"Re-encrypted {count} secret(s) under the newest encryption key.")


@cli.group("tokens", cls=_Group)
def tokens_group() -> None:
    """Revoke tokens (Ably's revokeTokens)."""


@tokens_group.command("revoke")
@click.argument("key_name", metavar="KEYNAME")
@click.option("--client-id", "client_ids", multiple=True, help="Revoke this clientId's tokens.")
@click.option("--revocation-key", "revocation_keys", multiple=True, help="... or these.")
@click.option("--allow-reauth-margin", is_flag=True, help="Apply 30 s later (Ably's margin).")
@_json_option
def tokens_revoke(
    key_name: str,
    client_ids: tuple[str, ...],
    revocation_keys: tuple[str, ...],
    allow_reauth_margin: bool,
    as_json: bool,
) -> None:
    """Refuse (40141) the key's tokens issued until now for a clientId or revocation key."""
    from .keys.sql import target_error

    targets = [f"clientId:{c}" for c in client_ids]
    targets += [f"revocationKey:{k}" for k in revocation_keys]
    if not targets:
        raise click.ClickException("give --client-id ID or --revocation-key KEY (or several)")
    for target in targets:
        error = target_error(target)
        if error is not None:
            raise click.ClickException(error["error"]["message"])
    store = _keys().for_change(key_name)
    result = store.revoke_tokens(
        key_name, targets, allow_reauth_margin=allow_reauth_margin, actor=_actor()
    )
    if as_json:
        _print_json(result)
        return
    for entry in result["results"]:
        _echo(
            f"Revoked tokens of {key_name} for {entry['target']} issued before "
            f"{_time(entry['issuedBefore'])} (from {_time(entry['appliesAt'])})."
        )


def _audit_log() -> AuditLog:
    audit = _provider().audit
    if audit is None:
        raise click.ClickException(
            "there is no audit log: no database is in use (set TOKENREQ_DATABASE_URL, or "
            "TOKENREQ_KEY_ENCRYPTION_KEYS for managed keys)"
        )
    return audit


@cli.command("audit")
@click.option("--since", help="Only events this recent: 1h, 7d, ...")
@click.option("--event", help="Only this event, e.g. key.revoked or token.refused.")
@click.option("--key", "key_name", metavar="KEYNAME", help="Only events about this key.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=100, show_default=True)
@click.option("--purge", is_flag=True, help="Delete events older than TOKENREQ_AUDIT_RETENTION.")
@_json_option
def audit_command(
    since: str | None,
    event: str | None,
    key_name: str | None,
    limit: int,
    purge: bool,
    as_json: bool,
) -> None:
    """Show the audit log, newest first (or purge it with --purge)."""
    since_ms = None if since is None else parse_duration("--since", since)
    audit = _audit_log()
    if purge:
        count = audit.purge()
        if as_json:
            _print_json({"purged": count, "retentionDays": audit.retention_days})
        else:
            _echo(f"Purged {count} audit event(s) older than {audit.retention_days} days.")
        return
    events = audit.query(
        since_ms=None if since_ms is None else _now() - since_ms,
        event=event,
        key_name=key_name,
        limit=limit,
    )
    if as_json:
        _print_json([e.to_dict() for e in events])
        return
    if not events:
        _echo("No audit events.")
    for e in events:
        fields = [_time(e.at), e.event, e.key_name or "-", e.client_id or "-", e.actor or "-"]
        if e.code is not None:
            fields.append(str(e.code))
        _echo("  ".join(fields))


@cli.group("nonces", cls=_Group)
def nonces_group() -> None:
    """The nonce store."""


@nonces_group.command("purge")
@_json_option
def nonces_purge(as_json: bool) -> None:
    """Delete every expired nonce claim now."""
    store = _provider().nonces
    purge = getattr(store, "purge", None)
    if purge is None:
        raise click.ClickException(f"this nonce store ({type(store).__name__}) cannot be purged")
    count = int(purge())
    if as_json:
        _print_json({"purged": count})
    else:
        _echo(f"Purged {count} expired nonce claim(s).")


@cli.group("db", cls=_Group)
def db_group() -> None:
    """The managed-key and audit tables."""


@db_group.command("init")
@_json_option
def db_init(as_json: bool) -> None:
    """Create the tables (also in flask_tokenreq.models.metadata, for Alembic)."""
    from . import models

    provider = _provider()
    keys = provider.keys
    if keys.managed is not None:
        keys.managed.create_tables()
        keys.managed.check()
        url = keys.managed.database.url
    else:
        audit = _audit_log()
        audit.create_tables()
        url = audit.db.url
    tables = [t.name for t in models.metadata.sorted_tables]
    if as_json:
        _print_json({"database": url, "tables": tables, "schemaVersion": models.SCHEMA_VERSION})
    else:
        _echo(f"Tables ready in {url}: {', '.join(tables)}.")


@cli.command("ticket")
@click.option("--actor", required=True, help="Who will use the key page (for the audit log).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(list(DEFAULT_SCOPES)),
    help="keys:read, keys:write (default: both).",
)
@_json_option
def ticket_command(actor: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Print the key page's URL with a fresh single-use ticket."""
    admin = current_app.extensions.get(ADMIN_EXTENSION)
    if not isinstance(admin, TicketIssuer):
        raise click.ClickException(
            "no KeyAdmin is registered on this app: add flask_tokenreq.KeyAdmin(app) to use "
            "the key page"
        )
    granted = scopes or DEFAULT_SCOPES
    try:
        ticket = admin.issue_ticket(actor, granted)
    except ValueError as exc:  # the KeyAdmin's own checks of actor and scopes
        raise click.ClickException(str(exc)) from None
    with current_app.test_request_context():
        try:
            url = url_for(ADMIN_PAGE_ENDPOINT, ticket=ticket, _external=True)
        except BuildError:
            raise click.ClickException(
                f"the KeyAdmin has no {ADMIN_PAGE_ENDPOINT!r} page to link to"
            ) from None
    if as_json:
        _print_json({"url": url, "actor": actor, "scopes": list(granted)})
    else:
        _echo(url)

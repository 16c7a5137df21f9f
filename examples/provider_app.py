"""Example: the token provider plus a channel resource guarded by its tokens.

Run ``python examples/provider_app.py --port 5001`` or
``gunicorn 'examples.provider_app:create_app()'``.

- ``POST /keys/<keyName>/requestToken`` and ``GET /time``: the provider, at the
  root (or at ``TOKENREQ_PROVIDER_URL_PREFIX``).
- ``POST /channels/<name>/messages`` (needs ``publish``) and
  ``GET /channels/<name>/messages`` (needs ``history``): messages in the shapes
  Ably REST clients send and read, stored with SQLAlchemy in
  ``TOKENREQ_MESSAGES_DATABASE`` (default: SQLite in the instance folder).

Keys: with ``TOKENREQ_KEY_ENCRYPTION_KEYS`` set, managed keys from
``TOKENREQ_DATABASE_URL`` (default: ``tokenreq.sqlite3`` in the instance
folder), plus static keys if ``TOKENREQ_PROVIDER_KEYS`` is set; manage them
with ``flask --app 'examples.provider_app:create_app()' tokenreq keys ...``.
Without it, static keys only: ``TOKENREQ_PROVIDER_KEYS``, else ``[TOKENREQ_KEY]``.

Settings come from ``TOKENREQ_*`` environment variables (JSON-parsed). Without
static keys (and no managed keys), ``TOKENREQ_SIGNING_SECRET`` or
``FLASK_SECRET_KEY`` it falls back to development values, logging a warning:
never deploy those.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, request

from flask_tokenreq import settings
from flask_tokenreq.clock import Clock, now_ms
from flask_tokenreq.errors import (
    BadRequest,
    InvalidBody,
    InvalidClientId,
    InvalidParameter,
    TokenReqError,
    ably_errors,
)
from flask_tokenreq.http import JSON, MSGPACK, Cors, no_store
from flask_tokenreq.provider import CORS_HEADERS, TokenProvider, current_identity
from flask_tokenreq.tokens import Identity

try:  # optional: the msgpack extra
    import msgpack
except ImportError:  # pragma: no cover
    msgpack = None

log = logging.getLogger(__name__)

#: Development-only values, the same in every worker. The key matches
#: examples/issuer_app.py, so the two examples work together out of the box.
DEV_PROVIDER_KEYS = ["devapp.devkey:dev-only-secret-0123456789abcdef0123456789"]
DEV_SIGNING_SECRET = "dev-only-token-signing-secret-0123456789abcdef"
DEV_SECRET_KEY = "dev-only-session-key-change-me-0123456789abcdef"

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Largest publish body (Ably's default maximum message size is 64 KiB).
DEFAULT_MAX_BYTES = 64 * 1024
MAX_CHANNEL_NAME = 255


def invalid_message(message: str) -> TokenReqError:
    return BadRequest(message, code=40013)  # Ably: invalid message data or encoding


# -- wire formats: the only place that knows JSON from msgpack --------------------


def read_body(max_bytes: int) -> Any:
    """The request body, decoded by its Content-Type (JSON or msgpack)."""
    too_large = BadRequest(
        f"request body too large: at most {max_bytes} bytes", code=40009, status=413
    )
    if (request.content_length or 0) > max_bytes:  # before the app's MAX_CONTENT_LENGTH
        raise too_large
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise too_large
    if not raw:
        raise InvalidBody("request body is empty: send a message or a list of messages")
    if request.mimetype == MSGPACK:
        if msgpack is None:
            raise InvalidBody("msgpack bodies need the msgpack package", status=415)
        try:
            return msgpack.unpackb(raw, raw=False, strict_map_key=True)
        except Exception:
            raise InvalidBody("request body is not valid msgpack") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidBody("request body is not valid JSON") from None


def wants_msgpack() -> bool:
    if msgpack is None:
        return False
    if request.args.get("format") in ("msgpack", "json"):
        return request.args["format"] == "msgpack"
    return request.accept_mimetypes.best_match((JSON, MSGPACK)) == MSGPACK


def respond(data: Any, status: int = 200) -> Response:
    """``data`` as msgpack when the client asked for it, else JSON.

    Binary message ``data`` stays binary in msgpack; in JSON it becomes base64
    with ``base64`` appended to the message's ``encoding``, as Ably does.
    """
    if wants_msgpack():
        body = msgpack.packb(data, use_bin_type=True)
        return no_store(Response(body, status=status, mimetype=MSGPACK))
    if isinstance(data, list):
        data = [_json_safe(item) for item in data]
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return no_store(Response(text, status=status, mimetype=JSON))


def _json_safe(message: Any) -> Any:
    if not (isinstance(message, dict) and isinstance(message.get("data"), bytes)):
        return message
    encoding = message.get("encoding")
    return {
        **message,
        "data": base64.b64encode(message["data"]).decode("ascii"),
        "encoding": f"{encoding}/base64" if encoding else "base64",
    }


# -- storage ---------------------------------------------------------------------

metadata = sa.MetaData()
messages_table = sa.Table(
    "example_channel_messages",
    metadata,
    sa.Column("serial", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(MAX_CHANNEL_NAME), nullable=False),
    sa.Column("id", sa.String(255), nullable=False),
    sa.Column("name", sa.Text),
    sa.Column("client_id", sa.Text),
    sa.Column("encoding", sa.Text),
    sa.Column("data_text", sa.Text),
    sa.Column("data_bytes", sa.LargeBinary),
    sa.Column("extras", sa.Text),
    sa.Column("timestamp", sa.BigInteger, nullable=False),
    sa.UniqueConstraint("channel", "id"),
    sa.Index("ix_example_channel_messages_time", "channel", "timestamp", "serial"),
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # several workers may write at once
    cursor.close()


class MessageStore:
    """Channel messages in one SQL table (SQLite, PostgreSQL, ...)."""

    def __init__(self, url: str) -> None:
        connect_args = {"timeout": 10} if url.startswith("sqlite") else {}
        self.engine = sa.create_engine(url, connect_args=connect_args, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        try:
            metadata.create_all(self.engine)
        except sa.exc.DatabaseError:  # another worker created it at the same moment
            metadata.create_all(self.engine)

    def add(self, channel: str, messages: list[dict[str, Any]]) -> list[str | None]:
        """Store messages; returns their serials (``None`` for an id already stored).

        A message whose ``id`` is already on the channel is a client retry
        (idempotent publishing) and is not stored twice.
        """
        ids = [m["id"] for m in messages]
        try:
            with self.engine.begin() as conn:
                known = set(
                    conn.scalars(
                        sa.select(messages_table.c.id).where(
                            messages_table.c.channel == channel, messages_table.c.id.in_(ids)
                        )
                    )
                )
                serials: list[str | None] = []
                for m in messages:
                    if m["id"] in known:
                        serials.append(None)
                        continue
                    known.add(m["id"])
                    result = conn.execute(messages_table.insert().values(channel=channel, **m))
                    key = result.inserted_primary_key
                    serials.append(None if key is None else _serial(key[0]))
                return serials
        except sa.exc.IntegrityError:  # a concurrent retry stored the same ids first
            return [None] * len(messages)

    def history(
        self, channel: str, *, start: int | None, end: int | None, limit: int, forwards: bool
    ) -> list[dict[str, Any]]:
        t = messages_table
        query = sa.select(t).where(t.c.channel == channel)
        if start is not None:
            query = query.where(t.c.timestamp >= start)
        if end is not None:
            query = query.where(t.c.timestamp <= end)
        order = (
            (t.c.timestamp, t.c.serial) if forwards else (t.c.timestamp.desc(), t.c.serial.desc())
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(*order).limit(limit)).mappings().all()
        return [_to_wire(row) for row in rows]


def _serial(value: int) -> str:
    return f"{value:020d}"


def _to_wire(row: Mapping[Any, Any]) -> dict[str, Any]:
    wire = {
        "id": row["id"],
        "serial": _serial(row["serial"]),
        "timestamp": row["timestamp"],
        "name": row["name"],
        "clientId": row["client_id"],
        "data": row["data_bytes"] if row["data_bytes"] is not None else row["data_text"],
        "encoding": row["encoding"],
        "extras": None if row["extras"] is None else json.loads(row["extras"]),
    }
    return {k: v for k, v in wire.items() if v is not None}


# -- messages --------------------------------------------------------------------


def _opt_str(message: Mapping[str, Any], field: str, *, nonempty: bool = False) -> str | None:
    value = message.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or (nonempty and not value):
        raise invalid_message(f"message {field} must be a non-empty string")
    return value


def parse_messages(body: Any, identity: Identity, now: int) -> tuple[list[dict[str, Any]], str]:
    """Validate a publish body (a message or a list): rows for the store and the id base.

    Messages without an ``id`` get ``<base>:<index>`` (Ably's form). The
    ``clientId`` comes from the credentials when the message has none; a
    different one is refused (40012) unless the token's clientId is ``*`` or
    the request used Basic key auth.
    """
    items = body if isinstance(body, list) else [body]
    if not items:
        raise invalid_message("publish at least one message")
    base = secrets.token_urlsafe(9)
    token_client_id = identity.client_id
    rows = []
    for index, message in enumerate(items):
        if not isinstance(message, dict):
            raise invalid_message("each message must be an object with name and data")
        name = _opt_str(message, "name")
        encoding = _opt_str(message, "encoding")
        message_id = _opt_str(message, "id", nonempty=True) or f"{base}:{index}"
        if len(message_id) > 255:
            raise invalid_message("message id is longer than 255 characters")
        client_id = message.get("clientId")
        if client_id is not None and (not isinstance(client_id, str) or not client_id):
            raise InvalidClientId("message clientId must be a non-empty string")
        if client_id is None:
            client_id = token_client_id if token_client_id != "*" else None
        elif identity.kind != "basic" and token_client_id not in ("*", client_id):
            raise InvalidClientId(
                f"message clientId {client_id!r} does not match the clientId "
                f"{token_client_id!r} of the credentials used to publish"
            )
        data = message.get("data")
        if isinstance(data, (dict, list)):  # what Ably SDKs do with an object
            data = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
            encoding = f"{encoding}/json" if encoding else "json"
        if data is not None and not isinstance(data, (str, bytes)):
            raise invalid_message("message data must be a string, binary, an object or a list")
        extras = message.get("extras")
        if extras is not None and not isinstance(extras, dict):
            raise invalid_message("message extras must be an object")
        try:
            extras_text = None if extras is None else json.dumps(extras, ensure_ascii=False)
        except (TypeError, ValueError):
            raise invalid_message("message extras must be JSON") from None
        rows.append(
            {
                "id": message_id,
                "name": name,
                "client_id": client_id,
                "encoding": encoding,
                "data_text": data if isinstance(data, str) else None,
                "data_bytes": data if isinstance(data, bytes) else None,
                "extras": extras_text,
                "timestamp": now,
            }
        )
    return rows, base


def _int_arg(name: str, default: int | None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 16:
        raise InvalidParameter(f"{name} must be a non-negative integer (ms since the epoch)")
    return int(raw)


def _check_channel(name: str) -> None:
    if not name.strip() or len(name) > MAX_CHANNEL_NAME or not name.isprintable():
        raise BadRequest(
            f"invalid channel name: 1 to {MAX_CHANNEL_NAME} printable characters", code=40010
        )


def channels_blueprint(
    provider: TokenProvider,
    store: MessageStore,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    cors: Cors | None = None,
    now_ms: Clock = now_ms,
) -> Blueprint:
    """The channel resource: publish and history, guarded by ``provider`` tokens."""
    bp = Blueprint("channels", __name__)
    cors = cors or Cors(())

    @bp.post("/channels/<path:name>/messages")
    @provider.require("publish", "{name}")
    def publish(name: str) -> Response:
        _check_channel(name)
        identity = current_identity()
        assert identity is not None
        rows, base = parse_messages(read_body(max_bytes), identity, now_ms())
        serials = store.add(name, rows)
        return respond({"channel": name, "messageId": base, "serials": serials}, 201)

    @bp.get("/channels/<path:name>/messages")
    @provider.require("history", "{name}")
    def history(name: str) -> Response:
        _check_channel(name)
        direction = request.args.get("direction", "backwards")
        if direction not in ("backwards", "forwards"):
            raise InvalidParameter("direction must be 'backwards' or 'forwards'")
        limit = _int_arg("limit", DEFAULT_LIMIT)
        if limit is None or not 1 <= limit <= MAX_LIMIT:
            raise InvalidParameter(f"limit must be between 1 and {MAX_LIMIT}")
        start, end = _int_arg("start", None), _int_arg("end", None)
        if start is not None and end is not None and start > end:
            raise InvalidParameter("start must not be after end")
        found = store.history(
            name, start=start, end=end, limit=limit, forwards=direction == "forwards"
        )
        return respond(found)

    @bp.before_request
    def preflight() -> Response | None:
        if request.method == "OPTIONS" and cors:
            return cors.preflight(request)
        return None

    @bp.after_request
    def cors_headers(response: Response) -> Response:
        if cors:
            cors.apply(request, response)
        return response

    ably_errors(bp)  # 404/405/413 and the unexpected as Ably errors, too
    return bp


# -- development managed keys (make demo) -----------------------------------------

#: Where :func:`development_encryption_key` keeps its key, in the instance folder.
DEV_ENCRYPTION_KEY_FILE = "dev-encryption-key.txt"
#: The ``name`` of the managed key :func:`development_managed_key` finds or creates.
DEV_MANAGED_KEY_NAME = "Demo key"


def development_encryption_key(instance_path: str) -> str:
    """A Fernet key for ``TOKENREQ_KEY_ENCRYPTION_KEYS`` in development, with a warning.

    Made once and kept in the instance folder (readable by the owner only), so
    it is the same for every worker process and after a restart; keys
    encrypted under it stay readable. Never deploy it: the key sits next to
    the database it protects.
    """
    from cryptography.fernet import Fernet

    path = os.path.join(instance_path, DEV_ENCRYPTION_KEY_FILE)
    log.warning(
        "TOKENREQ_KEY_ENCRYPTION_KEYS is not set: using a development encryption key kept "
        "in %s (never deploy it)",
        path,
    )
    os.makedirs(instance_path, exist_ok=True)
    # Written whole to a file of this process, then linked into place: a worker
    # starting at the same moment finds either no file or the complete key.
    key = Fernet.generate_key().decode("ascii")
    draft = f"{path}.{os.getpid()}.tmp"
    with open(os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as handle:
        handle.write(key + "\n")
    try:
        os.link(draft, path)  # fails if another process was first
    except FileExistsError:
        with open(path, encoding="ascii") as handle:
            key = handle.read().strip()
    finally:
        os.unlink(draft)
    return key


def development_managed_key(settings_: Mapping[str, Any], instance_path: str) -> str:
    """The full key of the managed key named :data:`DEV_MANAGED_KEY_NAME`, made if missing.

    For a development setup where one process both signs (the issuer's
    ``TOKENREQ_KEY``) and exchanges (managed keys): the key lives in the
    managed-key database like any other, so ``flask tokenreq keys`` lists,
    rotates and revokes it; a revoked one is replaced at the next start.
    """
    from flask_tokenreq import settings
    from flask_tokenreq.keys.sql import SqlKeyStore

    url = settings.read(settings_, "TOKENREQ_DATABASE_URL") or "sqlite:///tokenreq.sqlite3"
    store = SqlKeyStore(
        url,
        settings.read(settings_, "TOKENREQ_KEY_ENCRYPTION_KEYS"),
        app_id=settings.read(settings_, "TOKENREQ_APP_ID"),
        instance_path=instance_path,
    )
    try:
        store.create_tables()
        store.check()
        for info in store.list("active"):
            key = store.get(info.key_name) if info.name == DEV_MANAGED_KEY_NAME else None
            if key is not None:
                return f"{key.key_name}:{key.secret}"
        _, full = store.create(DEV_MANAGED_KEY_NAME, actor="development set-up")
        log.warning("created the managed key %s for development", full.partition(":")[0])
        return full
    finally:
        store.close()


# -- the app ---------------------------------------------------------------------


def example_setting(app: Flask, name: str, check: settings.Check, default: Any) -> Any:
    """A setting of this example only (not in :mod:`flask_tokenreq.settings`).

    From ``app.config``, where ``settings.from_env`` put the environment's;
    unset or empty is ``default``; a value is checked as the package checks its
    own (a :class:`~flask_tokenreq.errors.ConfigError` naming the setting).
    """
    value = app.config.get(name)
    return default if value is None or value == "" else check(name, value)


def create_app(
    overrides: Mapping[str, Any] | None = None,
    *,
    instance_path: str | None = None,
    now_ms: Clock = now_ms,
) -> Flask:
    """The example provider; ``overrides`` are applied to ``app.config`` last."""
    app = Flask(__name__, instance_path=instance_path)
    # Forms are never expected here; FLASK_* variables and overrides may change these.
    app.config.update(MAX_FORM_MEMORY_SIZE=16 * 1024, MAX_FORM_PARTS=100)
    settings.from_env(app.config)  # every TOKENREQ_* variable, JSON-parsed
    app.config.from_prefixed_env()  # FLASK_SECRET_KEY -> SECRET_KEY
    app.config.update(overrides or {})
    managed = bool(app.config.get("TOKENREQ_KEY_ENCRYPTION_KEYS"))
    defaults = [
        ("SECRET_KEY", "FLASK_SECRET_KEY", DEV_SECRET_KEY),
        ("TOKENREQ_SIGNING_SECRET", "TOKENREQ_SIGNING_SECRET", DEV_SIGNING_SECRET),
    ]
    if not managed:
        # Static keys only: one key shared with the issuer (the usual two-process
        # setup), else a development key. With managed keys on, static keys are
        # served only when TOKENREQ_PROVIDER_KEYS names them (a managed key given
        # to the issuer must not come back as a static key: it would shadow the
        # managed one, and revoking it would not bite).
        if not app.config.get("TOKENREQ_PROVIDER_KEYS") and app.config.get("TOKENREQ_KEY"):
            app.config["TOKENREQ_PROVIDER_KEYS"] = [app.config["TOKENREQ_KEY"]]
        defaults.append(("TOKENREQ_PROVIDER_KEYS", "TOKENREQ_PROVIDER_KEYS", DEV_PROVIDER_KEYS))
    for setting, variable, dev_value in defaults:
        if not app.config.get(setting):
            log.warning("%s is not set: using a development value (never deploy it)", variable)
            app.config[setting] = dev_value

    provider = TokenProvider(app, now_ms=now_ms)
    database = example_setting(app, "TOKENREQ_MESSAGES_DATABASE", settings.string, None)
    if database is None:
        os.makedirs(app.instance_path, exist_ok=True)
        database = "sqlite:///" + os.path.join(app.instance_path, "example-messages.sqlite3")
    store = MessageStore(database)
    max_bytes = example_setting(
        app, "TOKENREQ_MESSAGES_MAX_BYTES", settings.integer(minimum=256), DEFAULT_MAX_BYTES
    )
    if app.config.get("MAX_CONTENT_LENGTH") is None:
        # Every body is bounded, chunked or not (413 beyond), whatever reads it.
        app.config["MAX_CONTENT_LENGTH"] = 2 * max_bytes
    cors = Cors(settings.read(app.config, "TOKENREQ_PROVIDER_CORS_ORIGINS"), headers=CORS_HEADERS)
    app.extensions["example_messages"] = store

    app.register_blueprint(
        channels_blueprint(provider, store, max_bytes=max_bytes, cors=cors, now_ms=now_ms)
    )

    ably_errors(app)  # every error of the app answers in Ably's format
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port_arg", nargs="?", type=int, metavar="port", help="same as --port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    create_app().run(host=args.host, port=args.port_arg or args.port)

"""The tables of managed keys, token revocations and the audit log (SQLAlchemy Core).

:data:`metadata` holds every table, for ``flask tokenreq db init`` and for an
app's own Alembic migrations (``target_metadata = [app_metadata,
flask_tokenreq.models.metadata]``). All names start with ``tokenreq_``.

- ``tokenreq_keys``: one row per managed key (no secret).
- ``tokenreq_key_secrets``: the key's secrets, Fernet-encrypted. The current
  one has ``not_after`` NULL; a previous one keeps verifying until
  ``not_after`` (rotation grace) and is deleted after it.
- ``tokenreq_token_revocations``: Ably ``revokeTokens`` targets.
- ``tokenreq_audit``: the audit log (DESIGN §7b columns).
- ``tokenreq_generation``: one row, a counter that every key change and token
  revocation increments in its own transaction. A process may keep what is
  not secret (status, expiry, capability, revocations) in memory as long as
  the counter it read with it is still current: one primary-key read per
  request, and nothing a change made stale is ever served.
- ``tokenreq_meta``: one row, the schema version (:data:`SCHEMA_VERSION`) and
  an encrypted canary that shows at start whether the configured encryption
  keys are the ones the database was written with.

Times are integer milliseconds since the epoch, as everywhere in Ably.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "SCHEMA_VERSION",
    "audit",
    "generation",
    "key_secrets",
    "keys",
    "meta",
    "metadata",
    "token_revocations",
]

#: The version of these tables; a later release that changes them migrates from it.
SCHEMA_VERSION = 1

#: Longest key name (``appId.keyId``), as in the nonce table.
KEY_NAME_LENGTH = 255

#: Constraint names that Alembic can refer to (stable across databases).
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite makes an autoincrementing rowid only for INTEGER PRIMARY KEY.
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

#: One row (id 1): the schema version and the encryption canary.
meta = sa.Table(
    "tokenreq_meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    # A Fernet token of a fixed text, under the newest encryption key.
    sa.Column("encryption_canary", sa.Text, nullable=True),
    sa.CheckConstraint("id = 1", name="single_row"),
)

#: One row (id 1): bumped by every key change and token revocation.
generation = sa.Table(
    "tokenreq_generation",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.CheckConstraint("id = 1", name="single_row"),
)

keys = sa.Table(
    "tokenreq_keys",
    metadata,
    sa.Column("key_name", sa.String(KEY_NAME_LENGTH), primary_key=True),
    sa.Column("app_id", sa.String(64), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    # Canonical capability JSON (what tokens made from the key may at most do).
    sa.Column("capability", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
    sa.Column("revoked_reason", sa.String(500), nullable=True),
    # Approximate (written at most once a minute per process); not a key change.
    sa.Column("last_used_at", sa.BigInteger, nullable=True),
    sa.CheckConstraint("status IN ('active', 'revoked')", name="status"),
)

key_secrets = sa.Table(
    "tokenreq_key_secrets",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column(
        "key_name",
        sa.String(KEY_NAME_LENGTH),
        sa.ForeignKey(keys.c.key_name, ondelete="CASCADE"),
        nullable=False,
    ),
    # Fernet token of the secret; never the secret itself.
    sa.Column("ciphertext", sa.Text, nullable=False),
    # "tkr_ab…wxyz", for lists and the key page (36 of the 256 random bits).
    sa.Column("hint", sa.String(16), nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # NULL: the current secret. Otherwise: verifies until then (inclusive).
    sa.Column("not_after", sa.BigInteger, nullable=True),
    sa.Index("ix_tokenreq_key_secrets_key_name", "key_name"),
    # At most one current secret per key.
    sa.Index(
        "uq_tokenreq_key_secrets_current",
        "key_name",
        unique=True,
        sqlite_where=sa.text("not_after IS NULL"),
        postgresql_where=sa.text("not_after IS NULL"),
    ),
)

token_revocations = sa.Table(
    "tokenreq_token_revocations",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column(
        "key_name",
        sa.String(KEY_NAME_LENGTH),
        sa.ForeignKey(keys.c.key_name, ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("target_type", sa.String(16), nullable=False),
    sa.Column("value", sa.String(1024), nullable=False),
    # Tokens of the key matching the target and issued before this are refused ...
    sa.Column("issued_before", sa.BigInteger, nullable=False),
    # ... from this moment on (later than creation with allowReauthMargin).
    sa.Column("applies_at", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Index("ix_tokenreq_token_revocations_key_name", "key_name"),
    sa.CheckConstraint("target_type IN ('clientId', 'revocationKey')", name="target_type"),
)

audit = sa.Table(
    "tokenreq_audit",
    metadata,
    sa.Column("id", _Id, primary_key=True, autoincrement=True),
    sa.Column("at", sa.BigInteger, nullable=False),
    sa.Column("event", sa.String(64), nullable=False),
    sa.Column("key_name", sa.String(KEY_NAME_LENGTH), nullable=True),
    sa.Column("client_id", sa.String(255), nullable=True),
    sa.Column("actor", sa.String(255), nullable=True),
    sa.Column("code", sa.Integer, nullable=True),
    sa.Column("remote_addr", sa.String(64), nullable=True),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("detail", sa.JSON(none_as_null=True), nullable=True),
    sa.Index("ix_tokenreq_audit_at", "at"),
    sa.Index("ix_tokenreq_audit_key_name_at", "key_name", "at"),
    sa.Index("ix_tokenreq_audit_event_at", "event", "at"),
)

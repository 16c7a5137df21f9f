"""Trivial's "client keys": a long-lived key for a server-to-server client, from the CLI.

No users and no token round trip: a back-end service (here, a billing
worker) is given a managed key once and sends it with every call::

    $ flask --app 'examples.trivial_app:create_app()' tokenreq keys create \\
          --name "Billing worker" --json
    {"keyName": "trivial.Xy12AbCd", "key": "trivial.Xy12AbCd:tkr_…", ...}
    $ curl -H 'Authorization: Bearer trivial.Xy12AbCd:tkr_…' http://127.0.0.1:5000/api/invoices

``Authorization: Basic base64(key)`` works too, as in Ably. The routes take
the key itself only (``require(..., key_only=True)``): a token is refused
with 40162. A key revoked with ``tokenreq keys revoke KEYNAME --reason R`` is
refused from the moment the command returns, in every worker (40131); a
mistyped one before any lookup (40101, "key is malformed"). A key created
with ``--capability '{"invoices":["history"]}'`` may list invoices, not
create them (40160).

Settings come from ``TOKENREQ_*`` / ``FLASK_*`` environment variables.
Without ``TOKENREQ_KEY_ENCRYPTION_KEYS`` and ``TOKENREQ_SIGNING_SECRET`` it
uses development values, with a warning: never deploy those. Keys live in
``TOKENREQ_DATABASE_URL`` (default: ``trivial.sqlite3`` in the instance
folder), which the CLI and the server share. The file is Trivial's own: the
demo's ``tokenreq.sqlite3`` in the same folder is encrypted under another key.

Run ``python examples/trivial_app.py [--port 5000]``.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, g, request

if not __package__:  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.seed import configure, serve
from flask_tokenreq import TokenProvider
from flask_tokenreq.errors import BadRequest

#: Development-only values, the same in every worker process. Never deploy them.
DEV_VALUES = {
    # A Fernet key: urlsafe base64 of b"dev-only-fernet-key-never-deploy".
    "TOKENREQ_KEY_ENCRYPTION_KEYS": ["ZGV2LW9ubHktZmVybmV0LWtleS1uZXZlci1kZXBsb3k="],
    "TOKENREQ_SIGNING_SECRET": "dev-only-trivial-token-signing-secret-0123456789",
}
#: Trivial's own database in the instance folder: encrypted under its development key,
#: it would refuse to open with the demo's (and the demo's with this one) if they shared one.
DATABASE_URL = "sqlite:///trivial.sqlite3"
#: What the billing worker reads.
INVOICES = [
    {"id": "inv-1", "customer": "acme", "amountCents": 12_000},
    {"id": "inv-2", "customer": "globex", "amountCents": 4_500},
]


def create_app(
    overrides: Mapping[str, Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """The example; ``overrides`` are applied to ``app.config`` last."""
    app = Flask(__name__, instance_path=instance_path)
    defaults = {"TOKENREQ_APP_ID": "trivial", "TOKENREQ_DATABASE_URL": DATABASE_URL}
    configure(app, defaults, overrides, dev_values=DEV_VALUES)
    provider = TokenProvider(app)  # managed keys: TOKENREQ_KEY_ENCRYPTION_KEYS is set

    @app.get("/api/invoices")
    @provider.require("history", "invoices", key_only=True)
    def list_invoices() -> dict[str, Any]:
        return {"invoices": INVOICES, "caller": g.tokenreq.key_name}

    @app.post("/api/invoices")
    @provider.require("publish", "invoices", key_only=True)
    def create_invoice() -> tuple[dict[str, Any], int]:
        body = request.get_json(silent=True)
        body = body if isinstance(body, dict) else {}
        customer, amount = body.get("customer"), body.get("amountCents")
        if not isinstance(customer, str) or not customer or type(amount) is not int or amount < 1:
            raise BadRequest('send a JSON object {"customer": "acme", "amountCents": 1200}')
        invoice = {
            "id": f"inv-{secrets.token_hex(4)}",
            "customer": customer,
            "amountCents": amount,
            "createdBy": g.tokenreq.key_name,  # the key that called, never its secret
        }
        return invoice, 201

    return app


if __name__ == "__main__":
    serve(create_app, __doc__)

"""Signals (blinker, as Flask's own): what the issuer and provider did, for apps and tests.

Each is sent with the Flask app as sender. Connect a receiver to log, count
or forward events (the audit log and the pytest plugin's recorder are built
on them)::

    from flask_tokenreq import signals

    @signals.token_refused.connect_via(app)
    def on_refused(app, token_request, key_name, error, **extra):
        metrics.increment(f"tokenreq.refused.{error.code}")

Receivers run in the request; an exception in one propagates, so keep them
small. No signal carries a key secret; ``token_issued`` carries the token
details the client receives. :data:`audit_event` carries every audit event
(:class:`~flask_tokenreq.audit.AuditEvent`, already redacted), also when
``TOKENREQ_AUDIT`` is off, so an app can forward them elsewhere.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: The issuer signed a TokenRequest: ``token_request`` (TokenRequest), ``user``.
token_request_signed = _signals.signal("tokenreq.token-request-signed")

#: The provider exchanged a TokenRequest: ``token_request`` (TokenRequest),
#: ``token`` (:class:`~flask_tokenreq.tokens.IssuedToken`).
token_issued = _signals.signal("tokenreq.token-issued")

#: The provider refused an exchange: ``token_request`` (TokenRequest, or ``None``
#: when the body was not one), ``key_name`` (from the URL), ``error`` (TokenReqError).
token_refused = _signals.signal("tokenreq.token-refused")

#: An audit event (DESIGN §7b): ``event`` (:class:`~flask_tokenreq.audit.AuditEvent`).
#: The sender is the Flask app when there is an app context, else the
#: :class:`~flask_tokenreq.audit.AuditLog`. Key changes are sent after their
#: transaction committed; exchanges when they are queued for the audit table.
audit_event = _signals.signal("tokenreq.audit")

"""The key-management page (DESIGN §7c): :class:`KeyAdmin`.

- :mod:`.extension`: :class:`KeyAdmin` (``issue_ticket``, the blueprint, security headers);
- :mod:`.tickets`: single-use signed tickets and their exchange checks;
- :mod:`.session`: the session cookie and the CSRF check;
- :mod:`.views`: the page and the ticket exchange;
- :mod:`.api`: the JSON API (keys, audit).

The page itself is ``templates/tokenreq_admin/page.html`` with
``static/admin.js`` and ``static/admin.css``.
"""

from __future__ import annotations

from .extension import KeyAdmin

__all__ = ["KeyAdmin"]

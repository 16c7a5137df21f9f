"""Archiva's "frontend token route": a 90-second, read-only, project-scoped token for the browser.

One line registers the route, two settings make its tokens short and
read-only, and one hook says which projects a user may read::

    app.config["TOKENREQ_TTL"] = 90_000  # 90-second tokens
    app.config["TOKENREQ_ISSUER_CAPABILITY"] = {"project:*": ["subscribe", "history"]}
    issuer = TokenIssuer(app, url_prefix="/api/archiva")  # GET /api/archiva/token?projectId=

The project page gets its token with the JS helper's cached ``getToken()``
(``tokenreq.js``, served by the issuer) and reads the project's events from
the provider, mounted at ``/provider`` in the same app. A token for project
``p1`` reads ``project:p1`` only, and writes nothing (40160).

Run ``python examples/archiva_app.py [--port 5000]``, sign in as ``alice`` /
``alice-password`` (projects p1, p2), ``bob`` / ``bob-password`` (p1) or
``carol`` / ``carol-password`` (p2), and open ``/projects/p1``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response, g
from flask_login import current_user
from markupsafe import escape

if not __package__:  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.seed import User, add_sign_in, configure, serve, username
from flask_tokenreq import TokenIssuer, TokenProvider
from flask_tokenreq.errors import BadRequest

#: The projects each demo user (examples/accounts.py) may read.
PROJECTS = {"alice": ["p1", "p2"], "bob": ["p1"], "carol": ["p2"]}
#: Each project's events (what the page reads with its token).
EVENTS = {
    "p1": [{"id": 1, "what": "report.pdf uploaded"}, {"id": 2, "what": "report.pdf archived"}],
    "p2": [{"id": 3, "what": "budget.xlsx uploaded"}],
    "p3": [{"id": 4, "what": "secret.txt uploaded"}],
}


def create_app(
    overrides: Mapping[str, Any] | None = None, *, instance_path: str | None = None
) -> Flask:
    """The example; ``overrides`` are applied to ``app.config`` last."""
    app = Flask(__name__, instance_path=instance_path)
    configure(
        app,
        {
            "TOKENREQ_TTL": 90_000,  # 90-second tokens
            "TOKENREQ_ISSUER_CAPABILITY": {"project:*": ["subscribe", "history"]},  # read-only
            "TOKENREQ_PROVIDER_URL_PREFIX": "/provider",
        },
        overrides,
    )
    add_sign_in(app)

    issuer = TokenIssuer(app, url_prefix="/api/archiva")  # GET /api/archiva/token?projectId=
    issuer.client_id_loader(username)

    @issuer.authorize
    def needs_a_project(user: User, request: Request) -> bool:
        if not request.args.get("projectId"):
            raise BadRequest("projectId is required: a token is for one project")
        return True

    @issuer.project_loader
    def project(user: User, project_id: str) -> dict[str, list[str]] | None:
        if project_id not in PROJECTS.get(user.username, []):
            return None  # 403: not this user's project
        return {f"project:{project_id}": ["*"]}  # narrowed to read-only by the setting

    provider = TokenProvider(app)

    @app.get("/provider/projects/<project_id>/events")
    @provider.require("history", "project:{project_id}")
    def events(project_id: str) -> dict[str, Any]:
        return {
            "project": project_id,
            "clientId": g.tokenreq.client_id,
            "events": EVENTS.get(project_id, []),
        }

    @app.post("/provider/projects/<project_id>/events")
    @provider.require("publish", "project:{project_id}")
    def add_event(project_id: str) -> dict[str, Any]:
        return {"project": project_id}  # never reached with a read-only token

    @app.get("/")
    def home() -> Response:
        if not current_user.is_authenticated:
            return _page("Archiva", SIGN_IN)
        links = "".join(
            f'<li><a href="/projects/{escape(p)}">{escape(p)}</a></li>'
            for p in PROJECTS.get(current_user.username, [])
        )
        return _page("Archiva", f"<p>Your projects:</p><ul>{links}</ul>")

    @app.get("/projects/<project_id>")
    def project_page(project_id: str) -> Response:
        if not current_user.is_authenticated:
            return _page("Archiva", SIGN_IN)
        body = f'<main data-project="{escape(project_id)}">{PROJECT}</main>'
        return _page(f"Archiva: {project_id}", body)

    return app


def _page(title: str, body: str) -> Response:
    html = (
        f'<!doctype html><html lang="en"><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style><h1>{escape(title)}</h1>{body}</html>"
    )
    return Response(html, mimetype="text/html")


STYLE = (
    "body{font:16px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:44rem;padding:0 1rem}"
    "output{font-family:ui-monospace,monospace}[role=alert]{color:#b00020;font-weight:600}"
)

SIGN_IN = """
<form id="signin"><input name="username" placeholder="alice" aria-label="username">
<input name="password" type="password" placeholder="alice-password" aria-label="password">
<button>Sign in</button></form><p id="error" role="alert"></p>
<script type="module">
document.getElementById('signin').addEventListener('submit', async (event) => {
  event.preventDefault();
  const body = new URLSearchParams(new FormData(event.target));  // a urlencoded form
  const response = await fetch('/login', { method: 'POST', body });
  if (response.ok) location.reload();
  else document.getElementById('error').textContent = (await response.json()).error.message;
});
</script>
"""

#: The project page: the JS helper's cached getToken(), then the events.
PROJECT = """
<p>Token: <output id="ttl">none yet</output> <output id="capability"></output>
issued at <output id="issued"></output></p>
<p><button id="refresh">Refresh events</button> <button id="write">Try to add an event</button>
(refreshed <output id="refreshes">0</output> times)</p>
<ul id="events"></ul><p id="error" role="alert"></p>
<script type="module">
import { createTokenClient } from '/api/archiva/tokenreq.js';

const projectId = document.querySelector('main').dataset.project;
const tokens = createTokenClient({
  authUrl: '/api/archiva/token',  // the frontend token route
  providerUrl: '/provider',
  authParams: { projectId },
});
const $ = (id) => document.getElementById(id);

/** The JSON body of a 2xx answer; otherwise a TokenError with the Ably code. */
async function json(response) {
  if (response.ok) return response.json();
  throw await tokens.errorFrom(response);
}

async function refresh() {
  $('error').textContent = '';
  try {
    // Cached: the route is asked again only shortly before the 90 s token expires.
    const details = await tokens.getToken();
    $('ttl').textContent = `${(details.expires - details.issued) / 1000} s`;
    $('capability').textContent = details.capability;
    $('issued').textContent = details.issued;
    const body = await json(await tokens.fetch(`/provider/projects/${projectId}/events`));
    $('events').replaceChildren(...body.events.map((e) => {
      const li = document.createElement('li');
      li.textContent = e.what;
      return li;
    }));
  } catch (error) {
    $('error').textContent = `Error ${error.code}: ${error.message}`;
  }
  $('refreshes').textContent = String(Number($('refreshes').textContent) + 1);
}

$('refresh').addEventListener('click', refresh);
$('write').addEventListener('click', async () => {
  try {
    await json(await tokens.fetch(`/provider/projects/${projectId}/events`, { method: 'POST' }));
  } catch (error) {
    $('error').textContent = `Error ${error.code}: ${error.message}`;
  }
});
refresh();
</script>
"""


if __name__ == "__main__":
    serve(create_app, __doc__)

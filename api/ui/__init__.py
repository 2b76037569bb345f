"""The operator page (/ui/): the fleet, one vehicle, alerts and silent devices, in a browser.

Server-rendered HTML (Jinja, autoescaped) over the same service functions as the REST API, each value dumped by
the API's own schema, so a number on the page is the number the API returns. Sign-in with a read or admin API key
(api/ui/session.py); every script and style sheet is served by the app (no CDN): the page's own, and Chart.js,
pinned in api/ui/package.json and installed by scripts/setup.sh.
"""

from __future__ import annotations

from api.ui.views import blp, init_app

__all__ = ["blp", "init_app"]

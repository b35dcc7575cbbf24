"""The result browser (`vlmbatch serve`): read-only, server-rendered pages over the ledger.

- `app`: routing, the HTTP server, security headers; `auth`: the optional access token.
- `queries`: keyset-paged read queries, on read-only sessions (`schema.ledger.database.open_readonly_ledger`).
- `pages` and `job_page`: what each page shows, rendered from `templates/` by `rendering` (Jinja2,
  autoescaped); `layout`: the style sheet and value formatting.
- `thumbnails`: job images fetched through the object store seam, decoded with the worker's bounds.
"""

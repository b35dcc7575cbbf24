"""The result browser (`vlmbatch serve`): read-only, server-rendered pages over the ledger.

- `app`: routing, the HTTP server, security headers; `auth`: the optional access token.
- `queries`: keyset-paged read queries; `ledger`: the read-only session factory they run on.
- `pages`, `job_page` and `layout`: HTML, every untrusted value escaped through `markup`.
- `thumbnails`: job images fetched through the object store seam, decoded with the worker's bounds.
"""

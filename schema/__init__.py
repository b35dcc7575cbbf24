"""`vlmbatch.schema`: the ledger and the contracts both sides share. No I/O besides the database.

- `contracts/`: `settings` (the one pydantic-settings class), `models` (what crosses a boundary: run
  settings, job specs, reports), `errors` (the exception tree, 1:1 with the stored error types), `states`,
  `reasoning` (the `<think>` markers and the trace/answer split), `placement`, `tokens` (claim tokens).
- `grading/`: the graders; `symbolic` runs math-verify in a bounded child process.
- `ledger/`: `tables` (SQLAlchemy models), `database` (engines, sessions, migrations; `migrations/` is
  Alembic's), and the ledger operations, one concept each: `runs`, `enqueue` (bulk inserts), `claims` (leases),
  `outcomes` (fenced writes), `reconcile`, `resubmit`, `status`, `standing` (which results stand),
  `locks` (the one lock order: jobs by ascending id, then attempts).
"""

"""An OpenAI-compatible Batch API over the ledger (`vlmbatch serve`, under /v1): files, batches as runs."""

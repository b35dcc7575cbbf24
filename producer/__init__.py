"""`vlmbatch.producer`: making and steering work, and reading it back.

- `sources/` and `submit`: jobs from folders, S3 prefixes, manifests, Parquet with embedded images
  (`parquet`), WebDataset shards (`webdataset`), validated, inserted in bulk and published; `locations`
  resolves every image reference a source holds.
- `reports/`: `export` (streamed JSONL/Parquet/SFT/InternVL from one field table: `fields`, `records`,
  `formats`; the OpenAI Batch output and error files: `openai_batch`), `stats`, `results`, and `display`
  (how numbers and texts are shown).
- `browser/`: the read-only result browser.
- `api/`: the OpenAI-compatible Batch API (`files`, `batches` as runs, `ids`, `errors`) and `server`, the
  ASGI app and uvicorn server of `vlmbatch serve` (the API under /v1, the browser's pages elsewhere).
- `cli/`: the `vlmbatch` command line, thin commands over the parts above and over the worker's entry
  points (`python -m vlmbatch.producer.cli` is the same command).
"""

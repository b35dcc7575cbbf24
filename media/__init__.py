"""`vlmbatch.media`: reading job inputs, shared by the producer (sources, thumbnails) and the worker.

- `stores`: the object-store seam (S3 or compatible, local files, members of tar shards by range, http(s)),
  every failure mapped onto the error taxonomy.
- `http`: guarded http(s) fetches (private addresses refused on every hop, opt-out headers, caps, retries).
- `shards`: tar shard members (WebDataset): their byte ranges and the `tar+…` URIs jobs store.
- `staging`: content-addressed staging of embedded image bytes (Parquet cells, `data:` URIs).
- `local_roots`: the folders local reads are confined to (the run's own folder, `VLMBATCH_LOCAL_ROOTS`).
- `images`: hardened decoding of untrusted bytes into RGB images (bounded bytes and pixels, allow-listed
  formats).
"""

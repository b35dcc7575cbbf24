"""`vlmbatch.media`: reading job inputs, shared by the producer (sources, thumbnails) and the worker.

- `stores`: the object-store seam (S3 or compatible, local files), every failure mapped onto the error
  taxonomy.
- `local_roots`: the folders local reads are confined to (the run's own folder, `VLMBATCH_LOCAL_ROOTS`).
- `images`: hardened decoding of untrusted bytes into RGB images (bounded bytes and pixels, allow-listed
  formats).
"""

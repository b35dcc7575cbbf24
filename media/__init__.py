"""`vlmbatch.media`: reading job inputs, shared by the producer (sources, thumbnails) and the worker.

- `stores`: the object-store seam (S3 or compatible, local files), every failure mapped onto the error
  taxonomy.
- `images`: hardened decoding of untrusted bytes into RGB images (bounded bytes and pixels, allow-listed
  formats).
"""

"""`python -m app.batch`: embed a folder, a list of paths/URLs or a table column on a Ray
cluster (or this machine), with the server's own runtime backends, limits and URL policy.

    items (driver) -> embed (a pool of Ray actors, each with the server's backend loaded,
                      decoding its rows in threads beside the forward: on CPU)
                   -> EmbeddingSink (Parquet parts: id, source, embedding; failures apart)
    or, beside GPU actors (--decode-in tasks):
    items (driver) -> decode (Ray tasks: fetch/read, decode, preprocess) -> embed -> sink

Modules: decode.py (fetching, reading and decoding a row; the decoding tasks), embed.py
(the actors), sink.py (the output folder: parts, resume, failures), pipeline.py (the Ray
Data plan), __main__.py (flags)."""

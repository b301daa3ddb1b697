"""Model loading, device and dtype, family adapters, pooling and the embedder (no HTTP)."""

import os

# Progress bars and transformers' load reports are noise in a server log; the loader logs
# what was loaded and warns about weights it had to initialise itself.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

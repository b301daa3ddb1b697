"""Image inputs: where the bytes come from (URL, data URI, base64, raw file) and decoding (no torch)."""

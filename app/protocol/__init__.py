"""Open Inference Protocol V2: pydantic schemas, body parsing and the binary tensor extension."""

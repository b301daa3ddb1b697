"""HTTP routes (thin: parse, call the service, shape the answer) and the error mapping."""

"""Wire formats, one module each: `api` (the HTTP API's JSON, CONTRACT §6) and `mqtt` (the
payloads the gateway publishes, CONTRACT §3). Pure functions from stored rows to JSON objects."""

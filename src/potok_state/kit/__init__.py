"""The HTTP toolkit every feature shares: authentication, the error body, request
context, body limits, security headers, rate limits, JSON bodies, the write
headers (Idempotency-Key, If-Match) and the API docs page."""

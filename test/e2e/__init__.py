"""mailsrv's end-to-end tests, one module a subject; run them with test/e2e.py."""

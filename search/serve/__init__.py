"""Serving: the runtime, the HTTP API, the app, the web page, observability."""

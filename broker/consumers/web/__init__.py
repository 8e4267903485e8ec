"""The operator web console: a bus consumer serving a live page and a JSON API."""

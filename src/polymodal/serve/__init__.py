"""Serving a store over HTTP: schemas, the HTTP-free SearchService, the FastAPI app."""

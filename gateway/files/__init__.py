"""Uploaded files: the store (metadata and content), the Files API and PDF rendering."""

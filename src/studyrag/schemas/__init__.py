"""Pydantic request and response models, one module per area of the API."""

"""Notebooks: one per course or project; they own documents and conversations."""

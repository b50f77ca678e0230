"""StudyRAG: chat with your study documents, offline by default."""

__version__ = "0.1.0"

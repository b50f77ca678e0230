"""Running the product over HTTP and the CLI: settings (config.py) and models (models.py)."""

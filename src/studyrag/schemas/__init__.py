"""Pydantic schema families (Create, Update, Public), one module per area."""

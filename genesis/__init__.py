"""Example genesis documents for a demo consortium, and their schema."""

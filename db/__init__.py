"""Database schema of an envfence environment: SQL migrations and their runner (`db.migrate`)."""

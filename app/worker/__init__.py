"""envfence worker: ingests queued records into the environment's raw bucket and database."""

"""The envfence worker's container build context (the package is `worker`; see Dockerfile)."""

"""Isolation proofs over evaluated stacks: SMT encodings with counterexamples."""

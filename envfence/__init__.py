"""envfence: check and prove that Pulumi-declared AWS environments stay apart.

Modules: `evaluate` (run the program offline), `state` (load real state), `model` (StackState),
`rules` (isolation rules), `report` (text, JSON, SARIF), `cli` (the command line).
"""

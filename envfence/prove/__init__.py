"""Isolation proofs over stacks: for every ordered pair of environments, no principal of one can
act on the other's data, and no packet can travel between their VPCs.

- `world`: the states read once — roles with their policies, data resources with their ARNs
  and resource policies, declared flows.
- `query`: one question ("may this principal do anything here?") and the concrete request that
  answers it.
- `smt`: the question encoded for cvc5 (strings and regular expressions).
- `classes`: the same question answered independently, by the concrete evaluator on one
  witness per class of requests.
- `iam_proof`: principals closed under role assumption and role passing, declared flows,
  controls, the pair matrix.
- `network`: packets as bit-vectors over routes, peering, transit gateways, NAT, security
  groups and network ACLs.
- `run`: `prove(states)` and its text, JSON and SARIF reports (`envfence prove`).
"""

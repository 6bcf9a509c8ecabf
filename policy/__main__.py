"""The envfence CrossGuard pack: every isolation rule of `envfence.rules`, mandatory.

    pulumi preview --stack prod --policy-pack policy --policy-pack-config policy/config.json

The CLI's Python policy host (`python -m pulumi.policy`, from the virtualenv named in
PulumiPolicy.yaml) runs this file as a script with policy/ as the working directory and on
sys.path; constructing the PolicyPack starts the analyzer's gRPC server. Nothing imports this
file: `envfence.packrunner` runs it the same way, in-process, with the server start replaced.
The policies themselves are built by `envfence.crossguard`.
"""

import sys
from pathlib import Path

# The repository root: the policies read its Pulumi.yaml (registry) and Pulumi.<stack>.yaml
# files, and `envfence` (the rules) is imported from it: the pack enforces this checkout's rules.
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pulumi_policy import EnforcementLevel, PolicyPack  # noqa: E402

from envfence.crossguard import build_policies  # noqa: E402

PolicyPack(
    name="envfence",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=build_policies(ROOT),
)

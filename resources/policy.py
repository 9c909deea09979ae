"""The policy file as a resource, so assets read the same validated policy the code
location was loaded with."""

from functools import cached_property

import dagster as dg

from unified_assets.policy import Policy, load_policy


class PolicyResource(dg.ConfigurableResource):
    """`path` of the policy YAML; None means the policy shipped with the code."""

    path: str | None = None

    @cached_property
    def policy(self) -> Policy:
        return load_policy(self.path)

"""GRPO-SR preference alignment: rollouts from the policy, hybrid gated rewards, the group-relative loss."""

"""Traffic policy, pure: routes, subsets, balancing, zones, retries, budgets."""

"""Meta-architectures: the routed-model contract and every task on it."""

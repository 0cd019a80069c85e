"""How the network runs: execution plans, graph capture, inference copies and training
transforms."""

"""FLOPs accounting, the routing record, routing statistics, the budget constraint."""

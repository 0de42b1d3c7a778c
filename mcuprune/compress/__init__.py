"""Finding what is redundant: activation statistics, QSAE, structured removal, importance, KL, budgets."""

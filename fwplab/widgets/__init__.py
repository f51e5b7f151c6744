"""Interactive explorers and the plain plotting functions behind them."""

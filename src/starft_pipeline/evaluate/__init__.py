"""Predictions and metrics on group-shift splits, result tables, Markdown and figures. No Kedro."""

"""open_clip models, classifier heads, the frozen teacher, WiSE-FT, export and prediction. No Kedro."""

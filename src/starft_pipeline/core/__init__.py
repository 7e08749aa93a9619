"""Small shared pieces of the library: config helpers, atomic files, tensor bundles, process groups. No Kedro."""

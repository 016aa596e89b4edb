"""Market watcher: spot and on-demand prices across regions for the "where is it cheapest" views."""

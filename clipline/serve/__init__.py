"""`clipline serve`: the web page and JSON API over one table (search, the review queue, run history)."""

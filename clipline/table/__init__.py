"""A clipline table and what works on it directly: the store, search, upkeep, curated exports."""

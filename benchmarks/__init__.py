"""Speed harnesses: ratios measured on one machine in one run."""

"""The only code that builds Ray Data plans, plus read paths over the output table."""

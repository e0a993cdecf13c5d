"""HTTP routes of the BFF."""
